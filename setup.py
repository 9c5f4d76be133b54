"""Package discovery for setuptools; everything else about the package is in pyproject.toml.

The page lives in the top-level web/ folder of the checkout; the wheel carries it as package data of
`realtime.web` (web/ mapped to that name), so an installed server finds it next to its own code. pyproject.toml's
`packages.find` cannot add such a mapped package to the discovered ones, hence this file.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["realtime*", "engines*"]), "realtime.web"],
    package_dir={"realtime.web": "web"},
    package_data={"realtime.web": ["**/*"]},  # every file of the page, whatever the page's helpers add
)
