"""ICE host addresses (`serve --ice-address`): what the answer offers, what the media use, what the CLI accepts."""

from __future__ import annotations

import aioice.ice
import numpy as np
import pytest
from aiortc import RTCPeerConnection

from engines.errors import ConfigError
from engines.mtcnn import MTCNN
from realtime.live import ice
from realtime.live.transport import rtc_configuration
from tests import faces
from tests.live_client import StampedFaceTrack, face_frame, offer, wait_for
from tests.realtime.live_fixtures import identity_services, live_server

OFFER_WITH_FOREIGN_CANDIDATES = """v=0\r
o=- 1 1 IN IP4 0.0.0.0\r
m=video 9 UDP/TLS/RTP/SAVPF 96\r
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r
a=candidate:2 1 udp 2130706431 192.0.2.7 50001 typ host\r
a=candidate:3 1 udp 2130706431 4b1a7c2e-1f00-4a7e-9d3e-3a1d2f0c9b11.local 50002 typ host\r
a=candidate:4 1 udp 1694498815 198.51.100.9 50003 typ srflx raddr 192.0.2.7 rport 50001\r
a=candidate:5 1 udp 2122262783 ::1 50004 typ host\r
a=end-of-candidates\r
"""


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def test_host_addresses_name_what_ice_gathers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ice, "_interfaces", lambda v4, v6: ["10.1.2.3", "fe80::1"])
    assert aioice.ice.get_host_addresses(True, True) == ["10.1.2.3", "fe80::1"]  # outside: aioice's choice
    with ice.host_addresses(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(False, True) == ["::1"]
    with ice.host_addresses(None), ice.host_addresses([]):
        assert aioice.ice.get_host_addresses(True, True) == ["10.1.2.3", "fe80::1"]
    assert aioice.ice.get_host_addresses(True, True) == ["10.1.2.3", "fe80::1"]


def test_a_loopback_session_keeps_only_loopback_candidates_of_the_offer() -> None:
    kept = ice.loopback_candidates_only(OFFER_WITH_FOREIGN_CANDIDATES)
    assert ice.sdp_candidate_addresses(kept) == ["127.0.0.1", "::1"]
    assert "a=end-of-candidates" in kept  # the rest is untouched
    assert kept.startswith("v=0\r\n")
    assert kept.count("\r\n") == OFFER_WITH_FOREIGN_CANDIDATES.count("\r\n") - 3


def test_all_loopback() -> None:
    assert ice.all_loopback(["127.0.0.1", "127.0.0.2", "::1"])
    assert not ice.all_loopback(["127.0.0.1", "192.0.2.1"])
    assert not ice.all_loopback(None)
    assert not ice.all_loopback([])


def test_ice_addresses_are_checked() -> None:
    assert ice.check_addresses(["127.0.0.1", "127.0.0.1"]) == ("127.0.0.1",)
    for bad, words in (
        ("localhost", "not an IP address"),
        ("0.0.0.0", "not 0.0.0.0"),
        ("224.0.0.1", "name one address"),
        ("192.0.2.1", "not an address of this machine"),  # TEST-NET-1: nobody's interface
    ):
        with pytest.raises(ConfigError, match=words):
            ice.check_addresses([bad])


def test_serve_refuses_a_bad_ice_address(capsys: pytest.CaptureFixture[str]) -> None:
    from realtime.cli.main import main

    assert main(["serve", "--engine", "identity", "--ice-address", "192.0.2.1"]) != 0
    err = capsys.readouterr().err
    assert "--ice-address 192.0.2.1 is not an address of this machine" in err
    assert "Traceback" not in err


async def test_the_answer_carries_only_loopback_candidates_and_the_media_use_them(detector: MTCNN) -> None:
    async with live_server(identity_services(detector), ice_addresses=ice.LOOPBACK) as live:
        # the client also offers a foreign address: the server must not use it (nor answer from anything else)
        client = await offer(live.http, live.base, StampedFaceTrack(face_frame(faces.astronaut())))
        try:
            answer = client.pc.remoteDescription.sdp
            addresses = ice.sdp_candidate_addresses(answer)
            assert addresses, answer
            assert all(ice.is_loopback(a) for a in addresses), addresses
            assert await wait_for(lambda: len(client.received.images) >= 5, timeout=30), "no video came back"
            session = live.manager.sessions[client.session]
            for pc in (client.pc, session.link.pc):
                for local, remote in nominated_pairs(pc):
                    assert ice.all_loopback([local, remote]), (local, remote)
            _, stats = await live.json("GET", f"/api/stats?session={client.session}")
            route = stats["sessions"][0]["media_route"]  # what a user sees of it
            assert ice.all_loopback([route["local"].rsplit(":", 1)[0], route["remote"].rsplit(":", 1)[0]]), route
        finally:
            await client.close()


async def test_a_foreign_candidate_in_the_offer_is_never_used(detector: MTCNN) -> None:
    async with live_server(identity_services(detector)) as live:
        pc = RTCPeerConnection(rtc_configuration())
        pc.addTransceiver(StampedFaceTrack(np.zeros((48, 64, 3), np.uint8)), direction="sendrecv")
        try:
            with ice.host_addresses(ice.LOOPBACK):
                await pc.setLocalDescription(await pc.createOffer())
            sdp = pc.localDescription.sdp.replace(
                "a=end-of-candidates", "a=candidate:9 1 udp 2130706431 192.0.2.7 50001 typ host\r\na=end-of-candidates"
            )
            status, body = await live.json("POST", "/offer", json={"sdp": sdp, "type": "offer"})
            assert status == 200, body
            remote = live.manager.sessions[body["session"]].link.pc
            connections = [t.receiver.transport.transport._connection for t in remote.getTransceivers()]
            hosts = [c.host for connection in connections for c in connection._remote_candidates]
            assert hosts, "the server kept no remote candidate"
            assert all(ice.is_loopback(h) for h in hosts), hosts
            assert await wait_for(lambda: all(c._check_list for c in connections), timeout=10), "no pairs formed"
            pairs = [(p.local_candidate.host, p.remote_candidate.host) for c in connections for p in c._check_list]
            assert all(ice.all_loopback(pair) for pair in pairs), pairs
        finally:
            await pc.close()


def nominated_pairs(pc: RTCPeerConnection) -> list[tuple[str, str]]:
    """The (local, remote) hosts of every nominated ICE pair of `pc`'s transports."""
    out = []
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection  # aioice's, inside RTCIceTransport
        out += [(p.local_candidate.host, p.remote_candidate.host) for p in connection._nominated.values()]
    assert out, "no nominated candidate pair"
    return out
