"""The public surface: exports, version, the exception tree and where redis-py is used."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import redis_rpc
import redis_rpc.errors
from redis_rpc._io import errors as io_errors
from redis_rpc._io.server import RedisBackend
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    MessageDecodeError,
    RedisConnectionError,
    RedisRPCError,
    RequestTimeoutError,
    SetupError,
)

PACKAGE_DIR = Path(redis_rpc.__file__).parent
# Dunder names that are part of the public API all the same.
PUBLIC_DUNDERS = {"__version__"}


def _public_names(module: types.ModuleType) -> list[str]:
    """Names a module exposes: not private, not a module, not a __future__ feature."""
    return sorted(
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name in PUBLIC_DUNDERS)
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # from __future__ import annotations
    )


def _package_modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _module_name(path: Path) -> str:
    """``redis_rpc._io.server`` for ``redis_rpc/_io/server.py``; a package for its ``__init__.py``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_imports(path: Path) -> set[str]:
    """The redis_rpc modules that *path* imports, type-only imports included.

    ``from redis_rpc._io import errors`` imports the module ``errors``;
    ``from redis_rpc._io.errors import translate`` the module it names.
    """
    known = {_module_name(p) for p in _package_modules()}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module that *path* imports, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


class TestExports:
    def test_all_is_sorted(self):
        """redis_rpc.__all__ is in sorted order."""
        assert redis_rpc.__all__ == sorted(redis_rpc.__all__)

    def test_all_equals_public_names(self):
        """redis_rpc.__all__ lists exactly the public names the package exposes."""
        assert redis_rpc.__all__ == _public_names(redis_rpc)

    def test_every_exported_name_resolves(self):
        """Every name in redis_rpc.__all__ is an attribute of the package."""
        for name in redis_rpc.__all__:
            assert hasattr(redis_rpc, name), name

    def test_errors_all_is_sorted_and_complete(self):
        """redis_rpc.errors.__all__ is sorted and lists every public name in the module."""
        errors_all = redis_rpc.errors.__all__
        assert errors_all == sorted(errors_all)
        assert errors_all == _public_names(redis_rpc.errors)

    def test_public_classes_belong_to_the_package(self):
        """Exported classes are defined inside redis_rpc, except the re-exported Logger."""
        for name in redis_rpc.__all__:
            value = getattr(redis_rpc, name)
            if inspect.isclass(value) and name != "Logger":
                assert value.__module__.startswith("redis_rpc"), name

    def test_version_matches_metadata(self):
        """The installed distribution's version equals redis_rpc.__version__."""
        assert importlib.metadata.version("redis-rpc") == redis_rpc.__version__

    def test_package_logger_has_its_last_resort_only(self):
        """The package logger carries one handler, the last resort for its warnings, and no other: the library prints nothing else by itself."""
        import logging

        from redis_rpc._logs import LastResort

        handlers = logging.getLogger("redis_rpc").handlers
        assert [type(h) for h in handlers] == [LastResort]
        assert handlers[0].level == logging.WARNING


# What redis_rpc.errors exports beside its exceptions: the values of their attributes.
ERROR_ATTRIBUTE_TYPES = {
    "CommandReason",
    "ConnectionReason",
    "Redirect",
    "SigningKeyReason",
}
ERROR_CLASSES = sorted(set(redis_rpc.errors.__all__) - ERROR_ATTRIBUTE_TYPES)


class TestErrorTree:
    @pytest.mark.parametrize("name", ERROR_CLASSES)
    def test_every_error_subclasses_the_base(self, name):
        """Every exception in redis_rpc.errors subclasses RedisRPCError."""
        cls = getattr(redis_rpc.errors, name)
        assert issubclass(cls, RedisRPCError)

    def test_every_exception_class_is_listed(self):
        """Every exception class defined in redis_rpc.errors is in its __all__, and nothing else but the attribute types."""
        defined = {
            name
            for name, value in vars(redis_rpc.errors).items()
            if inspect.isclass(value) and issubclass(value, BaseException)
        }
        assert defined == set(ERROR_CLASSES)

    def test_reasons_are_a_closed_set(self):
        """An error with a reason outside its documented set cannot be built."""
        with pytest.raises(ValueError, match="Unknown reason"):
            RedisConnectionError("x", reason="permission")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="Unknown reason"):
            redis_rpc.errors.RedisCommandError("x", reason="timeout")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("ours", "builtin"),
        [
            (RequestTimeoutError, TimeoutError),
            (SetupError, ValueError),
            (MessageDecodeError, ValueError),
            (BrokerStateError, RuntimeError),
            (BrokerClosedError, BrokerStateError),
            (BrokerClosedError, RuntimeError),
        ],
    )
    def test_builtin_bases(self, ours, builtin):
        """Our exceptions also subclass the builtin that fits, so old except clauses work."""
        assert issubclass(ours, builtin)

    def test_request_timeout_attributes(self):
        """RequestTimeoutError carries its destination, correlation id and timeout."""
        exc = RequestTimeoutError(
            "No reply.", destination="list:orders", correlation_id="c", timeout=1.5
        )
        assert (exc.destination, exc.correlation_id, exc.timeout) == (
            "list:orders",
            "c",
            1.5,
        )
        assert str(exc) == "No reply."
        with pytest.raises(TimeoutError):
            raise exc

    def test_no_builtin_names_reused(self):
        """No exception we define reuses the name of a builtin exception."""
        import builtins

        for name in redis_rpc.errors.__all__:
            assert not hasattr(builtins, name), name


class TestRedisErrorMapping:
    def test_every_redis_error_is_mapped(self):
        """Every RedisError subclass in redis.exceptions is covered by ERROR_MAP."""
        import redis.exceptions

        keys = tuple(mapping.theirs for mapping in io_errors.ERROR_MAP)
        unmapped = [
            name
            for name, value in vars(redis.exceptions).items()
            if inspect.isclass(value)
            and issubclass(value, redis.exceptions.RedisError)
            and not issubclass(value, keys)
        ]
        assert not unmapped

    def test_map_targets_are_our_errors(self):
        """ERROR_MAP translates only into redis_rpc errors."""
        for mapping in io_errors.ERROR_MAP:
            assert issubclass(mapping.ours, RedisRPCError)

    def test_connection_error_is_translated_and_chained(self):
        """A redis-py ConnectionError becomes RedisConnectionError with the original as __cause__."""
        import redis.exceptions

        original = redis.exceptions.ConnectionError("Connection refused.")
        with (
            pytest.raises(RedisConnectionError) as info,
            io_errors.map_errors("db.example:6380"),
        ):
            raise original
        assert info.value.__cause__ is original
        assert "db.example:6380" in str(info.value)

    @pytest.mark.parametrize(
        ("theirs", "ours"),
        [
            ("TimeoutError", RedisConnectionError),
            ("AuthenticationError", RedisConnectionError),
            ("BusyLoadingError", RedisConnectionError),
            ("ResponseError", redis_rpc.errors.RedisCommandError),
            ("DataError", redis_rpc.errors.RedisCommandError),
        ],
    )
    def test_most_specific_class(self, theirs, ours):
        """Each redis-py error maps to our most specific class, chained."""
        import redis.exceptions

        original = getattr(redis.exceptions, theirs)("boom")
        with pytest.raises(ours) as info, io_errors.map_errors("h:1"):
            raise original
        assert info.value.__cause__ is original

    @pytest.mark.parametrize(
        ("theirs", "message", "ours", "reason", "advice"),
        [
            (
                "ConnectionError",
                "Error 111 connecting to h:1. Connection refused.",
                RedisConnectionError,
                "unreachable",
                "check that the server is running",
            ),
            (
                "AuthenticationError",
                "invalid username-password pair or user is disabled.",
                RedisConnectionError,
                "authentication",
                "check the user name and password",
            ),
            (
                "AuthenticationError",
                "Authentication required.",
                RedisConnectionError,
                "authentication",
                "requires a password, and none was given; put it in the URL",
            ),
            (
                "AuthenticationError",
                "HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used",
                RedisConnectionError,
                "authentication",
                "requires a password, and none was given; put it in the URL",
            ),
            (
                "AuthenticationError",
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                RedisConnectionError,
                "authentication",
                "has no password set, yet one was given; leave the password out of the URL",
            ),
            (
                "MaxConnectionsError",
                "Too many connections",
                RedisConnectionError,
                "pool_exhausted",
                "raise the max_connections option",
            ),
            (
                "TimeoutError",
                "Timeout reading from socket",
                RedisConnectionError,
                "timeout",
                "did not answer in time",
            ),
            (
                "NoPermissionError",
                "User bob has no permissions to run the 'xreadgroup' command",
                redis_rpc.errors.RedisCommandError,
                "permission",
                "ACL SETUSER",
            ),
            (
                "OutOfMemoryError",
                "command not allowed when used memory > 'maxmemory'.",
                redis_rpc.errors.RedisCommandError,
                "out_of_memory",
                "raise maxmemory",
            ),
            (
                "ReadOnlyError",
                "You can't write against a read only replica.",
                redis_rpc.errors.RedisCommandError,
                "read_only",
                "connect to the primary",
            ),
            (
                "MovedError",
                "3999 127.0.0.1:6381",
                redis_rpc.errors.RedisCommandError,
                "moved",
                "Redis Cluster",
            ),
            (
                "ResponseError",
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                redis_rpc.errors.RedisCommandError,
                "command",
                "WRONGTYPE",
            ),
        ],
    )
    def test_each_cause_has_its_own_reason_and_advice(
        self, theirs, message, ours, reason, advice
    ):
        """Each redis-py error becomes an error whose reason and message name its cause, in one sentence."""
        import redis.exceptions

        original = getattr(redis.exceptions, theirs)(message)
        with pytest.raises(ours) as info, io_errors.map_errors("h:1"):
            raise original
        text = str(info.value)
        assert info.value.reason == reason
        assert info.value.__cause__ is original
        assert advice in text
        assert "h:1" in text
        assert text.endswith(".")
        assert ".." not in text
        if reason != "unreachable":
            assert "running and reachable" not in text

    def test_other_exceptions_pass_through(self):
        """Exceptions that are not redis-py errors are not translated."""
        with pytest.raises(KeyError), io_errors.map_errors("h:1"):
            raise KeyError("x")

    def test_connection_address_hides_the_password(self):
        """A Connection's address, used in error messages, never contains the URL's password."""
        connection = RedisBackend(
            "redis://user:s3cr3t-pw@db.example:6380/0",
            socket_timeout=1.0,
            health_check_interval=30.0,
            options={},
        )
        try:
            assert connection.address == "db.example:6380"
            assert "s3cr3t-pw" not in connection.address
        finally:
            connection.close()


class TestPickling:
    @pytest.mark.parametrize(
        "error",
        [
            RedisRPCError("Boom."),
            SetupError("Bad option."),
            BrokerStateError("Not now."),
            BrokerClosedError("Closed."),
            RedisConnectionError("Gone.", reason="authentication"),
            redis_rpc.errors.RedisCommandError("No.", reason="permission"),
            redis_rpc.errors.RedisCommandError(
                "Moved.",
                reason="moved",
                redirect=redis_rpc.errors.Redirect("moved", 3999, "h", 7001),
            ),
            RequestTimeoutError(
                "No reply.", destination="list:orders", correlation_id="c", timeout=1.5
            ),
            redis_rpc.errors.NoSubscriberError("Nobody.", destination="channel:x"),
            redis_rpc.errors.SigningKeyError(
                "Keys differ.",
                reason="keys_differ",
                destination="list:x",
                correlation_id="c3",
            ),
            redis_rpc.errors.OverloadedError(
                "Full.", destination="list:jobs", queued=10, retry_after=0.5
            ),
            redis_rpc.RemoteError(
                type_name="KeyError",
                remote_message="'sku'",
                errors=["expected int @ $.n"],
                traceback="Traceback ...",
                destination="stream:s",
                correlation_id="c2",
            ),
            MessageDecodeError("Garbage."),
            redis_rpc.errors.MessageTooLargeError("Too big."),
            redis_rpc.errors.ValidationError("Does not fit.", errors=["a @ $"]),
        ],
        ids=lambda error: type(error).__name__,
    )
    def test_every_error_round_trips_through_pickle(self, error):
        """Every exception pickles and unpickles with its message and attributes, as Celery and multiprocessing need."""
        import pickle

        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert vars(copy) == vars(error)

    def test_every_error_class_is_covered(self):
        """The pickling test covers every exception class in redis_rpc.errors."""
        covered = {
            "RedisRPCError",
            "SetupError",
            "BrokerStateError",
            "BrokerClosedError",
            "RedisConnectionError",
            "RedisCommandError",
            "RequestTimeoutError",
            "NoSubscriberError",
            "SigningKeyError",
            "OverloadedError",
            "RemoteError",
            "MessageDecodeError",
            "MessageTooLargeError",
            "ValidationError",
        }
        assert covered == set(ERROR_CLASSES)


class TestOptions:
    @pytest.mark.parametrize(
        ("url", "options", "hint"),
        [
            ("redis://h:1/0", {"sockt_timeout": 1}, "sockt_timeout"),
            ("redis://h:1/0?ssl=true", {}, "rediss://"),
            ("redis://h:1/0?bogus_option=1", {}, "bogus_option"),
        ],
    )
    def test_unknown_option_fails_at_construction(self, url, options, hint):
        """An option that redis-py would reject on first use is refused when the broker is built."""
        with pytest.raises(SetupError, match="Unknown Redis option") as info:
            redis_rpc.RedisBroker(url, **options)
        assert hint in str(info.value)
        assert isinstance(info.value.__cause__, TypeError)

    def test_known_options_are_accepted(self):
        """Options redis-py knows, as keywords or in the URL, build a broker without connecting."""
        broker = redis_rpc.RedisBroker(
            "redis://h:1/0?socket_keepalive=true", max_connections=7, username="u"
        )
        broker.close()


# The I/O layer is the only code that imports redis-py.
IO_DIR = PACKAGE_DIR / "_io"
# No module may grow past this many lines, docstrings not counted: a sign
# that it holds more than one concern. (The public API's docstrings are its
# reference; the broker's alone are over 300 lines.)
MAX_MODULE_LINES = 800


def _docstring_lines(source: str) -> int:
    """How many lines of *source* are docstrings of its module, classes and functions."""
    count = 0
    for node in ast.walk(ast.parse(source)):
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, kinds) and ast.get_docstring(node, clean=False):
            first = node.body[0]
            count += (first.end_lineno or first.lineno) - first.lineno + 1
    return count


class TestImportRules:
    @pytest.mark.parametrize(
        "path",
        [p for p in _package_modules() if IO_DIR not in p.parents],
        ids=str,
    )
    def test_only_the_io_layer_imports_redis(self, path):
        """No module of redis_rpc outside _io/ imports redis-py."""
        assert "redis" not in _imported_modules(path)

    def test_no_import_cycles(self):
        """The modules of redis_rpc import each other without a cycle, type-only imports included."""
        graph = {_module_name(p): _internal_imports(p) for p in _package_modules()}
        for name, imports in graph.items():
            imports.discard(name)
        state: dict[str, str] = {}
        path: list[str] = []

        def visit(name: str) -> None:
            state[name] = "open"
            path.append(name)
            for imported in sorted(graph.get(name, ())):
                if state.get(imported) == "open":
                    cycle = [*path[path.index(imported) :], imported]
                    pytest.fail("import cycle: " + " -> ".join(cycle))
                if imported not in state:
                    visit(imported)
            path.pop()
            state[name] = "done"

        for name in sorted(graph):
            if name not in state:
                visit(name)

    @pytest.mark.parametrize("path", _package_modules(), ids=str)
    def test_modules_stay_small(self, path):
        """No module of redis_rpc is longer than MAX_MODULE_LINES lines, docstrings not counted."""
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines()) - _docstring_lines(text)
        assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines"

    @pytest.mark.parametrize("path", _package_modules(), ids=str)
    def test_no_pickle(self, path):
        """No module of redis_rpc imports pickle."""
        imported = _imported_modules(path)
        assert not imported & {"pickle", "cPickle", "dill", "cloudpickle", "marshal"}

    @pytest.mark.parametrize(
        "path", [p for p in _package_modules() if p.name != "opentelemetry.py"], ids=str
    )
    def test_only_opentelemetry_module_imports_opentelemetry(self, path):
        """No module of redis_rpc but opentelemetry.py imports OpenTelemetry, an optional extra."""
        assert "opentelemetry" not in _imported_modules(path)

    @pytest.mark.timeout(60)
    def test_works_without_opentelemetry(self):
        """redis_rpc imports and builds brokers with OpenTelemetry unavailable; only its tracing module needs it."""
        # redis-py looks for OpenTelemetry on its own, so "not loaded" cannot
        # be checked; "not importable" can, by blocking the package.
        code = (
            "import sys\n"
            "sys.modules['opentelemetry'] = None\n"
            "import redis_rpc, redis_rpc.errors, redis_rpc.testing\n"
            "redis_rpc.RedisBroker('redis://127.0.0.1:1').close()\n"
            "try:\n"
            "    import redis_rpc.opentelemetry\n"
            "except ImportError as exc:\n"
            "    print(exc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=PACKAGE_DIR.parent,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert 'pip install "redis-rpc[otel]"' in done.stdout

    def test_scan_sees_every_module(self):
        """The import scan covers every module that pkgutil finds in the package."""
        found = {
            m.name
            for m in pkgutil.walk_packages(redis_rpc.__path__, prefix="redis_rpc.")
        }
        assert found | {"redis_rpc"} == {_module_name(p) for p in _package_modules()}

    def test_scan_detects_redis(self):
        """The import scan does see redis-py imported by the single-server backend."""
        assert "redis" in _imported_modules(IO_DIR / "server.py")

    def test_scan_detects_internal_imports(self):
        """The cycle check sees type-only imports and imports of modules from packages."""
        imports = _internal_imports(PACKAGE_DIR / "_broker.py")
        assert "redis_rpc._io.interfaces" in imports  # under TYPE_CHECKING
        assert "redis_rpc._fork" in imports  # from redis_rpc import _fork
