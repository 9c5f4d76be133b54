"""The playout-delay header extension: its bytes, its negotiation in our answer, and its presence on sent packets."""

from __future__ import annotations

import struct

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from realtime.live import ice, playout
from realtime.live.transport import rtc_configuration


def test_payload_is_min_and_max_in_ten_millisecond_units() -> None:
    assert playout.payload(0, 0) == b"\x00\x00\x00"
    assert playout.payload(0, 100) == b"\x00\x00\x0a"
    assert playout.payload(20, 40950) == bytes((0x00, 0x2F, 0xFF))  # 12 bits each: 2 and 4095
    with pytest.raises(ValueError, match="playout delay"):
        playout.payload(100, 50)


def test_negotiated_video_packets_carry_it_and_others_do_not() -> None:
    playout.install()
    video = rtp.HeaderExtensionsMap()
    video.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                RTCRtpHeaderExtensionParameters(id=9, uri=playout.URI),
            ]
        )
    )
    packet = rtp.RtpPacket(payload_type=96, sequence_number=1, timestamp=3000, payload=b"x")
    packet.extensions.mid = "0"
    assert _extensions(packet.serialize(video)) == {1: b"0", 9: playout.payload()}
    assert rtp.RtpPacket.parse(packet.serialize(video), video).payload == b"x"  # still a well-formed packet
    audio = rtp.HeaderExtensionsMap()  # not negotiated: nothing added
    audio.configure(RTCRtpParameters(headerExtensions=[]))
    assert _extensions(rtp.RtpPacket(payload_type=111, payload=b"y").serialize(audio)) == {}


def _extensions(data: bytes) -> dict[int, bytes]:
    """The header extensions of a serialized RTP packet without CSRCs, by id (aiortc's parser drops unknown ones)."""
    if not data[0] & 0x10:
        return {}
    profile, words = struct.unpack_from("!HH", data, 12)
    return dict(rtp.unpack_header_extensions(profile, data[16 : 16 + 4 * words]))


async def test_our_answer_accepts_it_when_a_browser_offers_it() -> None:
    playout.install()
    browser = RTCPeerConnection(rtc_configuration())
    server = RTCPeerConnection(rtc_configuration())
    try:
        browser.addTransceiver("video", direction="sendrecv")
        with ice.host_addresses(ice.LOOPBACK):
            await browser.setLocalDescription(await browser.createOffer())
            offer = browser.localDescription.sdp
            assert playout.URI in offer
            await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await server.setLocalDescription(await server.createAnswer())
        answer = server.localDescription.sdp
        assert f"a=extmap:6 {playout.URI}" in answer
    finally:
        await browser.close()
        await server.close()
