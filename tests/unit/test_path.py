"""Path parameters without Redis: parsing channel templates, and handler signatures with ``Path()``."""

from __future__ import annotations

import enum
import logging

import attrs
import pytest

from redis_rpc import ListSub, Path, PubSub, RedisMessage, StreamSub
from redis_rpc._server.handler import Handler
from redis_rpc._wire.path import parse
from redis_rpc._wire.schemas import subscription
from redis_rpc.errors import SetupError, ValidationError

LOGGER = logging.getLogger("tests.unit.path")


class Level(enum.Enum):
    INFO = "info"
    WARN = "warn"


@attrs.frozen
class Point:
    x: int


def _handler(func, channel="logs.{level}"):
    return Handler(func, LOGGER, template=parse(channel))


def _call(func, path, channel="logs.{level}", body=b""):
    return _handler(func, channel)(RedisMessage(body=body, path=path))


class TestParse:
    @pytest.mark.parametrize(
        ("template", "subscription", "names"),
        [
            ("logs.{level}", "logs.*", ("level",)),
            ("logs.{level}.{code}", "logs.*.*", ("level", "code")),
            ("{level}", "*", ("level",)),
            ("{a}.x.{b}", "*.x.*", ("a", "b")),
            ("logs.{level}-x", "logs.*-x", ("level",)),
            ("a*.{level}", "a*.*", ("level",)),
        ],
    )
    def test_placeholders_become_stars(self, template, subscription, names):
        """Each {name} becomes * in the subscribed pattern, and the names keep their order."""
        parsed = parse(template)
        assert parsed.subscription == subscription
        assert parsed.names == names

    @pytest.mark.parametrize(
        "template",
        ["logs.{level}", "{a}.x.{b}", "a*.{level}", "x.{{y}}.{z}", "x.{{y}}", "p*"],
    )
    def test_same_subscription_as_faststream(self, template):
        """Where FastStream accepts a template, we subscribe to the name it does."""
        faststream_redis = pytest.importorskip("faststream.redis")
        assert parse(template).subscription == faststream_redis.PubSub(template).name

    @pytest.mark.parametrize(
        ("template", "subscription"),
        [("x.{{y}}", "x.{y}"), ("a}}b", "a}b"), ("plain", "plain"), ("p*", "p*")],
    )
    def test_no_placeholders(self, template, subscription):
        """Without placeholders only escaped braces are undone; a name with * is left as it is."""
        parsed = parse(template)
        assert parsed.names == ()
        assert parsed.subscription == subscription
        assert parsed.values(subscription) == {}

    def test_glob_characters_in_fixed_text_are_escaped(self):
        """? [ ] and \\ in a template's fixed text match themselves in Redis, not as glob syntax."""
        parsed = parse("a?[b]\\.{x}")
        assert parsed.subscription == "a\\?\\[b\\]\\\\.*"
        assert parsed.values("a?[b]\\.v") == {"x": "v"}
        assert parsed.values("ac[b]\\.v") == {}

    def test_star_in_fixed_text_stays_a_wildcard(self):
        """A * beside placeholders matches anything, in Redis and when the values are taken."""
        parsed = parse("*.logs.{level}")
        assert parsed.subscription == "*.logs.*"
        assert parsed.values("eu.web.logs.info") == {"level": "info"}

    @pytest.mark.parametrize(
        ("channel", "values"),
        [
            ("logs.info.7", {"level": "info", "code": "7"}),
            ("logs..7", {}),  # a placeholder takes at least one character
            ("logs.a.b.7", {}),  # and never a dot, as in FastStream
            ("logs.info", {}),
            ("xlogs.info.7", {}),
        ],
    )
    def test_values(self, channel, values):
        """Values are whole dot-free segments; a channel that does not fit gives none."""
        assert parse("logs.{level}.{code}").values(channel) == values

    @pytest.mark.parametrize(
        "template",
        [
            "logs.{level",
            "logs.level}",
            "logs.{}",
            "logs.{1st}",
            "logs.{lev-el}",
            "logs.{ level }",
            "logs.{a}{b}",
            "logs.{a}.{a}",
            "logs.{{a}",
        ],
    )
    def test_malformed(self, template):
        """A stray brace, a bad or repeated name, or two adjacent placeholders raise SetupError."""
        with pytest.raises(SetupError, match="Channel template"):
            parse(template)


class TestSources:
    def test_template_is_a_pattern(self):
        """A PubSub with placeholders is a pattern by default; one with escaped braces only is not."""
        assert PubSub("logs.{level}").pattern is True
        assert PubSub("x.{{y}}").pattern is False
        assert (
            PubSub("a{b").pattern is False
        )  # malformed: not a template, and publishable

    def test_template_with_pattern_false(self):
        """Placeholders on a channel given pattern=False raise SetupError when subscribing."""
        with pytest.raises(SetupError, match="pattern=False"):
            subscription(PubSub("logs.{level}", pattern=False))

    @pytest.mark.parametrize("source", [ListSub("jobs.{kind}"), StreamSub("ev.{kind}")])
    def test_no_templates_on_lists_and_streams(self, source):
        """Lists and streams take no placeholders, as in FastStream."""
        with pytest.raises(SetupError, match="only channels"):
            subscription(source)

    def test_braces_in_list_names_without_placeholders(self):
        """A list name with braces that form no placeholder is taken as it is."""
        assert subscription(ListSub("jobs{")) is None

    def test_malformed_channel_template(self):
        """A malformed channel template raises SetupError when subscribing."""
        with pytest.raises(SetupError):
            subscription(PubSub("logs.{level"))


class TestValues:
    def test_str(self):
        """A str path parameter gets the text."""

        def handler(level: str = Path()):
            return level

        assert _call(handler, {"level": "info"}) == "info"

    def test_unannotated(self):
        """An unannotated path parameter gets the text."""
        assert _call(lambda level=Path(): level, {"level": "5"}) == "5"

    def test_body_is_still_the_first_other_parameter(self):
        """A path parameter before the body does not take the body's place."""

        def handler(level: str = Path(), *, body: dict[str, int]):
            return level, body

        handler_ = _handler(handler)
        message = RedisMessage(
            body=b'{"a": 1}', content_type="application/json", path={"level": "x"}
        )
        assert handler_(message) == ("x", {"a": 1})

    def test_positional_body_then_path(self):
        """The body comes first, then path parameters, as handlers usually read."""

        def handler(body: str, level: str = Path()):
            return body, level

        assert _call(handler, {"level": "info"}, body=b"hi") == ("hi", "info")

    @pytest.mark.parametrize(
        ("annotation", "text", "value"),
        [
            (int, "5", 5),
            (int, "-12", -12),
            (float, "2.5", 2.5),
            (bool, "true", True),
            (Level, "warn", Level.WARN),
            (str, "5", "5"),
            (int | str, "5", "5"),  # text first: str takes it
            (int | None, "7", 7),
            (bytes, "ab", b"ab"),
        ],
    )
    def test_conversion(self, annotation, text, value):
        """Text first; a type that does not take text gets the text read as JSON."""

        def handler(n=Path()):
            return n

        handler.__annotations__ = {"n": annotation}
        result = _call(handler, {"n": text}, channel="c.{n}")
        assert result == value
        assert type(result) is type(value)

    @pytest.mark.parametrize(
        ("annotation", "text"),
        [(int, "x"), (int, "2.5"), (Level, "debug"), (int, "[[[")],
    )
    def test_bad_value(self, annotation, text):
        """A value that fits neither as text nor as JSON raises ValidationError naming the parameter."""

        def handler(n=Path()):
            return n

        handler.__annotations__ = {"n": annotation}
        with pytest.raises(ValidationError, match="Path parameter 'n'"):
            _call(handler, {"n": text}, channel="c.{n}")

    def test_alias(self):
        """Path("name") takes the placeholder of that name."""

        def handler(lvl: str = Path("level")):
            return lvl

        assert _call(handler, {"level": "info"}) == "info"

    def test_missing_value_uses_default(self):
        """When the channel does not fit, Path(default=...) gives its default."""

        def handler(level: str = Path(default="none")):
            return level

        assert _call(handler, {}) == "none"

    def test_missing_value_without_default(self):
        """When the channel does not fit and there is no default, ValidationError says so."""

        def handler(level: str = Path()):
            return level

        with pytest.raises(ValidationError, match=r"does not fit .logs\.\{level\}."):
            _call(handler, {})

    def test_undeclared_placeholder_is_ignored(self):
        """A placeholder the handler does not ask for is simply not passed."""

        def handler(b: str = Path()):
            return b

        assert _call(handler, {"a": "1", "b": "2"}, channel="x.{a}.{b}") == "2"

    def test_positional_only(self):
        """A positional-only path parameter is passed by position."""

        def handler(level: str = Path(), /):
            return level

        assert _call(handler, {"level": "info"}) == "info"


class TestSignatureErrors:
    def test_name_not_in_template(self):
        """A path parameter naming no placeholder raises SetupError at registration."""

        def handler(body, other: str = Path()): ...

        with pytest.raises(SetupError, match="has no \\{other\\}"):
            _handler(handler)

    def test_alias_not_in_template(self):
        """So does an alias naming no placeholder."""

        def handler(level: str = Path("lvl")): ...

        with pytest.raises(SetupError, match="has no \\{lvl\\}"):
            _handler(handler)

    def test_not_a_channel(self):
        """A path parameter on a subscriber without a channel template raises SetupError."""

        def handler(level: str = Path()): ...

        with pytest.raises(SetupError, match="not a channel"):
            Handler(handler, LOGGER)

    def test_channel_without_placeholders(self):
        """A plain channel has no placeholders to take values from."""

        def handler(level: str = Path()): ...

        with pytest.raises(SetupError, match="has no \\{level\\}"):
            _handler(handler, channel="logs.*")

    def test_type_the_converter_cannot_handle(self):
        """An annotation the converter cannot structure raises SetupError at registration."""

        class Opaque:
            def __init__(self, a, b): ...

        def handler(level=Path()): ...

        handler.__annotations__ = {"level": Opaque}
        with pytest.raises(SetupError, match="path parameter 'level'"):
            _handler(handler)

    def test_structured_type(self):
        """An attrs class is accepted, and takes a JSON object."""

        def handler(p=Path()):
            return p

        handler.__annotations__ = {"p": Point}
        assert _call(handler, {"p": '{"x":1}'}, channel="c.{p}") == Point(1)
