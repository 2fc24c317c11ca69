"""Destination option objects and the one factory that picks among them."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from redis_rpc import ListSub, PubSub, StreamSub
from redis_rpc._wire.schemas import DEFAULT_GROUP, destination
from redis_rpc.errors import SetupError


class TestDestination:
    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"channel": "c"}, PubSub("c")),
            ({"list": "l"}, ListSub("l")),
        ],
    )
    def test_builds_from_a_name(self, kwargs, expected):
        """A plain name under one keyword builds that keyword's option object."""
        options = {"channel": None, "list": None, "stream": None, **kwargs}
        assert destination(**options) == expected

    def test_builds_a_stream_from_a_name(self):
        """A plain name under stream= builds a StreamSub with the default group."""
        target = destination(None, None, "s")
        assert isinstance(target, StreamSub)
        assert (target.stream, target.group) == ("s", DEFAULT_GROUP)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"channel": "c", "list": "l"},
            {"channel": "c", "stream": "s"},
            {"list": "l", "stream": "s"},
            {"channel": "c", "list": "l", "stream": "s"},
        ],
    )
    def test_requires_exactly_one(self, kwargs):
        """Giving none or several of channel, list and stream raises SetupError."""
        options = {"channel": None, "list": None, "stream": None, **kwargs}
        with pytest.raises(SetupError, match="exactly one"):
            destination(**options)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"channel": PubSub("c")},
            {"list": ListSub("l")},
            {"stream": StreamSub("s", consumer="me")},
        ],
    )
    def test_accepts_matching_option_objects(self, kwargs):
        """An option object under its own keyword is returned unchanged."""
        options = {"channel": None, "list": None, "stream": None, **kwargs}
        (given,) = kwargs.values()
        assert destination(**options) is given

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"channel": ListSub("l")},
            {"channel": StreamSub("s")},
            {"list": PubSub("c")},
            {"list": StreamSub("s")},
            {"stream": PubSub("c")},
            {"stream": ListSub("l")},
        ],
    )
    def test_rejects_mismatched_option_objects(self, kwargs):
        """An option object under another transport's keyword raises SetupError."""
        options = {"channel": None, "list": None, "stream": None, **kwargs}
        with pytest.raises(SetupError):
            destination(**options)

    @pytest.mark.parametrize("keyword", ["channel", "list", "stream"])
    def test_rejects_empty_names(self, keyword):
        """An empty name under any keyword raises SetupError."""
        options: dict[str, Any] = {
            "channel": None,
            "list": None,
            "stream": None,
            keyword: "",
        }
        with pytest.raises(SetupError, match="non-empty"):
            destination(**options)

    def test_rejects_other_types(self):
        """A value that is neither a str nor an option object raises SetupError."""
        with pytest.raises(SetupError):
            destination(b"c", None, None)  # type: ignore[arg-type]


class TestPubSub:
    @pytest.mark.parametrize(
        ("name", "pattern"),
        [("logs", False), ("logs.*", True), ("*", True), ("a.b", False)],
    )
    def test_pattern_detected_from_star(self, name, pattern):
        """A channel name containing * is subscribed as a pattern by default."""
        assert PubSub(name).pattern is pattern

    def test_pattern_can_be_overridden(self):
        """An explicit pattern= wins over detection."""
        assert PubSub("a*", pattern=False).pattern is False
        assert PubSub("a", pattern=True).pattern is True

    def test_name_and_str(self):
        """A PubSub reports its channel as name and channel:<name> as str."""
        sub = PubSub("orders")
        assert sub.name == "orders"
        assert str(sub) == "channel:orders"

    def test_empty_name(self):
        """An empty channel name raises SetupError."""
        with pytest.raises(SetupError):
            PubSub("")

    def test_is_frozen(self):
        """PubSub is immutable."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            PubSub("c").channel = "d"  # type: ignore[misc]


class TestListSub:
    def test_name_and_str(self):
        """A ListSub reports its key as name and list:<name> as str."""
        sub = ListSub("jobs")
        assert sub.name == "jobs"
        assert str(sub) == "list:jobs"

    def test_empty_name(self):
        """An empty list name raises SetupError."""
        with pytest.raises(SetupError):
            ListSub("")

    def test_reliable_mode_is_off_by_default(self):
        """A ListSub consumes at most once unless reliable=True, with a 30 s recovery delay."""
        assert (ListSub("jobs").reliable, ListSub("jobs").recover_after) == (
            False,
            30.0,
        )
        sub = ListSub("jobs", reliable=True, recover_after=2.5)
        assert (sub.reliable, sub.recover_after) == (True, 2.5)

    @pytest.mark.parametrize("recover_after", [0, -1.0, True, "5"])
    def test_recover_after_must_be_positive_seconds(self, recover_after):
        """A recover_after that is not a positive number raises SetupError."""
        with pytest.raises(SetupError, match="recover_after"):
            ListSub("jobs", reliable=True, recover_after=recover_after)


class TestStreamSub:
    def test_defaults(self):
        """A StreamSub defaults to the redis_rpc group, a generated consumer and no maxlen."""
        sub = StreamSub("events")
        assert sub.group == "redis_rpc" == DEFAULT_GROUP
        assert sub.consumer
        assert sub.maxlen is None
        assert sub.name == "events"
        assert str(sub) == "stream:events"

    def test_default_consumers_are_distinct(self):
        """Two StreamSubs of one stream in one process get different consumer names."""
        names = {StreamSub("events").consumer for _ in range(20)}
        assert len(names) == 20

    def test_options_are_keyword_only(self):
        """group, consumer and maxlen are keyword-only."""
        sub = StreamSub("s", group="g", consumer="c", maxlen=5)
        assert (sub.group, sub.consumer, sub.maxlen) == ("g", "c", 5)
        with pytest.raises(TypeError):
            StreamSub("s", "g")  # type: ignore[call-arg]

    @pytest.mark.parametrize(
        "kwargs", [{"stream": ""}, {"group": ""}, {"consumer": ""}]
    )
    def test_empty_names(self, kwargs):
        """An empty stream, group or consumer name raises SetupError."""
        options = {"stream": "s", **kwargs}
        with pytest.raises(SetupError, match="non-empty"):
            StreamSub(**options)

    def test_evolve_keeps_validation(self):
        """attrs.evolve() to an empty group raises SetupError too."""
        with pytest.raises(SetupError):
            attrs.evolve(StreamSub("s"), group="")
