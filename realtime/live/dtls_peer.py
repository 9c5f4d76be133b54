"""Why a peer's DTLS handshake failed, where its certificate tells: FFmpeg's WHIP muxer built with GnuTLS.

Design notes: docs/design-notes.md, section realtime/live/dtls_peer.py.
"""

from __future__ import annotations

from typing import Any

# the curves OpenSSL 4 takes for an ECDSA certificate in DTLS 1.2: RFC 8422's, less the ones it deprecates
ACCEPTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def peer_certificates(pc: Any) -> list[Any]:
    """The certificates (pyca/cryptography objects) the peers of `pc`'s DTLS transports sent, where a handshake got
    that far; [] otherwise."""
    found: list[Any] = []
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        connection = getattr(transceiver.receiver.transport, "_ssl", None)  # aiortc's pyOpenSSL connection (private)
        if connection is None or id(connection) in seen:  # BUNDLE: one transport for every transceiver
            continue
        seen.add(id(connection))
        try:
            certificate = connection.get_peer_certificate(as_cryptography=True)
        except Exception:  # a diagnosis only: whatever aiortc or pyOpenSSL changed, the session ends as before
            continue
        if certificate is not None:
            found.append(certificate)
    return found


def refused_curve(certificate: Any) -> str | None:
    """The curve of `certificate`'s EC key when OpenSSL 4 refuses it in DTLS; None for any other key."""
    curve = getattr(certificate.public_key(), "curve", None)
    if curve is None:  # RSA, Ed25519: not this failure
        return None
    return None if curve.name in ACCEPTED_CURVES else str(curve.name)


def failure_reason(pc: Any) -> str | None:
    """Why `pc`'s DTLS handshake failed, when the peer's certificate is the cause; None when it is not known."""
    for certificate in peer_certificates(pc):
        curve = refused_curve(certificate)
        if curve is not None:
            return (
                f"the peer's DTLS certificate is on {curve}, a curve this server's TLS library (OpenSSL 4) refuses; "
                "FFmpeg built with GnuTLS makes such a certificate: give it a P-256 one with -cert_file and "
                "-key_file (README: WHIP)"
            )
    return None
