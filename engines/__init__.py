"""DanceCam engines: the networks, their weight converters and inference backends, and the model files."""
