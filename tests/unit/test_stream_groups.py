"""Where a created or re-created consumer group starts, and the StreamSub options that decide it."""

from __future__ import annotations

import pytest

from redis_rpc import StreamSub
from redis_rpc._server.streams import group_start, parse_entry_id
from redis_rpc.errors import SetupError

NOW = 1_700_000_000_000  # the Redis server's clock, in milliseconds


class TestGroupStart:
    def test_starts_replay_window_back(self):
        """A new group starts replay_window seconds before the server's clock."""
        assert group_start(NOW, 60.0, None) == b"1699999940000-0"

    def test_never_before_what_this_consumer_read(self):
        """A re-created group starts after the newest entry this consumer read, if that is later."""
        assert group_start(NOW, 60.0, (NOW - 5, 7)) == b"1699999999995-7"
        assert group_start(NOW, 60.0, (NOW - 90_000, 0)) == b"1699999940000-0"

    def test_none_starts_at_the_beginning(self):
        """replay_window=None starts at the first entry, or after the newest one read."""
        assert group_start(NOW, None, None) == b"0-0"
        assert group_start(NOW, None, (12, 3)) == b"12-3"

    def test_window_longer_than_the_clock_starts_at_zero(self):
        """A window reaching before the epoch starts at the first entry."""
        assert group_start(1000, 60.0, None) == b"0-0"

    def test_entry_ids_sort_as_redis_does(self):
        """Entry ids compare by milliseconds, then sequence, not as strings."""
        assert parse_entry_id(b"10-2") > parse_entry_id(b"9-30")
        assert parse_entry_id(b"5") == (5, 0)


class TestStreamSubOptions:
    def test_defaults(self):
        """A minute of replay, and dead consumers found after five seconds."""
        sub = StreamSub("s")
        assert (sub.replay_window, sub.recover_after) == (60.0, 5.0)

    @pytest.mark.parametrize("window", [0, 2.5, None])
    def test_replay_window_accepts_zero_seconds_and_none(self, window):
        """replay_window takes any number of seconds from 0 up, or None."""
        assert StreamSub("s", replay_window=window).replay_window == window

    @pytest.mark.parametrize("window", [-1, True, "60"])
    def test_replay_window_rejects_other_values(self, window):
        """A negative or non-numeric replay_window raises SetupError."""
        with pytest.raises(SetupError, match="replay_window"):
            StreamSub("s", replay_window=window)

    @pytest.mark.parametrize("recover_after", [0, -1.0, None])
    def test_recover_after_must_be_positive(self, recover_after):
        """A recover_after that is not a positive number raises SetupError."""
        with pytest.raises(SetupError, match="recover_after"):
            StreamSub("s", recover_after=recover_after)
