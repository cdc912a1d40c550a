"""PeerTable: newest expiry wins, expired announcements dropped, merges commute."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.p2p.discovery import PeerTable
from potluck.wire import ServerInfo

PEERS = [f"12D3KooW{letter * 8}" for letter in "abcdefgh"]
NOW = 100.0


def announce(
    peer_id: str = PEERS[0],
    expires_at: float = NOW + 20,
    *,
    start: int = 0,
    end: int = 10,
    free_cache_tokens: int = 1024,
) -> ServerInfo:
    return ServerInfo(
        peer_id=peer_id,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}",),
        model="smollm2",
        start=start,
        end=end,
        throughput=25.0,
        free_cache_tokens=free_cache_tokens,
        version="0.1.0",
        expires_at=expires_at,
    )


# --- upsert -----------------------------------------------------------------------


def test_upsert_records_a_live_announcement() -> None:
    table = PeerTable()
    info = announce()
    assert table.upsert(info, NOW) is True
    assert len(table) == 1
    assert table.get(info.peer_id) == info
    assert table.live(NOW) == [info]


@pytest.mark.parametrize("expires_at", [NOW - 1, NOW])
def test_upsert_refuses_an_announcement_already_expired(expires_at: float) -> None:
    table = PeerTable()
    assert table.upsert(announce(expires_at=expires_at), NOW) is False
    assert len(table) == 0
    assert table.get(PEERS[0]) is None


def test_later_expiry_replaces_the_known_announcement() -> None:
    table = PeerTable()
    old = announce(expires_at=NOW + 10, free_cache_tokens=1)
    new = announce(expires_at=NOW + 20, free_cache_tokens=2)
    assert table.upsert(old, NOW)
    assert table.upsert(new, NOW)
    assert table.get(PEERS[0]) == new
    assert len(table) == 1


def test_earlier_expiry_does_not_replace() -> None:
    table = PeerTable()
    known = announce(expires_at=NOW + 20, free_cache_tokens=1)
    table.upsert(known, NOW)
    assert table.upsert(announce(expires_at=NOW + 10, free_cache_tokens=2), NOW) is False
    assert table.get(PEERS[0]) == known


def test_the_same_announcement_again_changes_nothing() -> None:
    table = PeerTable()
    known = announce(expires_at=NOW + 20, free_cache_tokens=1)
    assert table.upsert(known, NOW) is True
    assert table.upsert(known, NOW) is False


# --- expiry -----------------------------------------------------------------------


def test_live_hides_expired_announcements_and_sorts_by_peer_id() -> None:
    table = PeerTable()
    infos = [announce(PEERS[i], NOW + 10 * (i + 1)) for i in (2, 0, 1)]
    table.merge(infos, NOW)
    assert [i.peer_id for i in table.live(NOW)] == PEERS[:3]
    # PEERS[0] expires at NOW + 10: at that instant it is no longer live
    assert [i.peer_id for i in table.live(NOW + 10)] == PEERS[1:3]
    assert table.live(NOW + 30) == []
    assert len(table) == 3  # live() does not delete


def test_prune_drops_expired_announcements_and_names_them() -> None:
    table = PeerTable()
    table.merge([announce(PEERS[0], NOW + 10), announce(PEERS[1], NOW + 20)], NOW)
    assert table.prune(NOW + 5) == []
    assert table.prune(NOW + 10) == [PEERS[0]]
    assert len(table) == 1
    assert table.get(PEERS[0]) is None
    assert table.prune(NOW + 10) == []


def test_a_dead_server_leaves_the_view_once_its_last_announcement_expires() -> None:
    table = PeerTable()
    table.upsert(announce(expires_at=NOW + 20), NOW)
    table.upsert(announce(expires_at=NOW + 25), NOW + 5)  # its last announcement
    assert table.live(NOW + 24) != []
    assert table.live(NOW + 25) == []


def test_remove_forgets_a_peer() -> None:
    table = PeerTable()
    table.upsert(announce(), NOW)
    table.remove(PEERS[0])
    table.remove(PEERS[1])  # unknown: no error
    assert len(table) == 0


def test_merge_counts_the_announcements_that_changed_the_table() -> None:
    table = PeerTable()
    infos = [
        announce(PEERS[0], NOW + 10),
        announce(PEERS[0], NOW + 20),  # replaces the first
        announce(PEERS[0], NOW + 15),  # older than known: ignored
        announce(PEERS[1], NOW - 1),  # expired: ignored
        announce(PEERS[2], NOW + 10),
    ]
    assert table.merge(infos, NOW) == 3
    assert table.merge(infos, NOW) == 0


# --- max_peers --------------------------------------------------------------------


def test_max_peers_caps_the_number_of_peers() -> None:
    table = PeerTable(max_peers=2)
    assert table.upsert(announce(PEERS[0]), NOW)
    assert table.upsert(announce(PEERS[1]), NOW)
    assert table.upsert(announce(PEERS[2]), NOW) is False
    assert len(table) == 2
    assert table.get(PEERS[2]) is None


def test_a_known_peer_may_refresh_when_the_table_is_full() -> None:
    table = PeerTable(max_peers=2)
    table.merge([announce(PEERS[0], NOW + 10), announce(PEERS[1], NOW + 10)], NOW)
    fresher = announce(PEERS[0], NOW + 30)
    assert table.upsert(fresher, NOW)
    assert table.get(PEERS[0]) == fresher
    assert len(table) == 2


def test_a_full_table_makes_room_by_dropping_expired_peers() -> None:
    table = PeerTable(max_peers=2)
    table.merge([announce(PEERS[0], NOW + 10), announce(PEERS[1], NOW + 30)], NOW)
    later = NOW + 15  # PEERS[0] has expired by now
    assert table.upsert(announce(PEERS[2], NOW + 40), later)
    assert table.get(PEERS[0]) is None
    assert [i.peer_id for i in table.live(later)] == [PEERS[1], PEERS[2]]


# --- order independence -----------------------------------------------------------


def _announcement(peer: int, expires_in: int) -> ServerInfo:
    # One announcement per (peer, expiry), as a server makes them: expiry is its clock
    # plus the TTL, so two different announcements of one peer never share an expiry.
    return announce(
        PEERS[peer],
        NOW - 5 + expires_in,
        start=peer,
        end=peer + 1 + expires_in % 3,
        free_cache_tokens=expires_in * 7,
    )


announcements = st.builds(_announcement, st.integers(0, len(PEERS) - 1), st.integers(0, 30))


def _merged(batches: list[list[ServerInfo]], *, now: float = NOW) -> PeerTable:
    table = PeerTable()
    for batch in batches:
        table.merge(batch, now)
    return table


@given(st.lists(announcements, max_size=30), st.data())
def test_merge_order_and_duplicates_do_not_matter(
    infos: list[ServerInfo], data: st.DataObject
) -> None:
    reference = _merged([infos])
    extra = data.draw(st.lists(st.sampled_from(infos), max_size=30) if infos else st.just([]))
    shuffled = data.draw(st.permutations(infos + extra))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    batches = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    other = _merged(batches)
    for t in (NOW, NOW + 7, NOW + 20, NOW + 40):
        assert other.live(t) == reference.live(t)


@given(st.lists(announcements, max_size=30), st.data())
def test_gossiped_views_converge(infos: list[ServerInfo], data: st.DataObject) -> None:
    """Two peers that saw different halves, then pulled each other's view, agree."""
    reference = _merged([infos])
    mine = data.draw(st.lists(st.sampled_from(infos)) if infos else st.just([]))
    theirs = [info for info in infos if info not in mine]
    a, b = _merged([mine]), _merged([theirs])
    a_view, b_view = a.live(NOW), b.live(NOW)
    a.merge(b_view, NOW)
    b.merge(a_view, NOW)
    assert a.live(NOW) == b.live(NOW) == reference.live(NOW)


def test_merge_order_does_not_matter_on_expiry_ties() -> None:
    a = announce(expires_at=NOW + 20, free_cache_tokens=1)
    b = announce(expires_at=NOW + 20, free_cache_tokens=2)
    assert _merged([[a, b]]).live(NOW) == _merged([[b, a]]).live(NOW)
