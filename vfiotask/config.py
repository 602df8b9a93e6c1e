"""Host-wide defaults from /etc/vfiotask/config.toml.

An administrator sets them once instead of on every command line and in every guest: the most
helper threads, the helpers' nice value, the state directory, whether a guest's RAM follows its
device's NUMA node, and whether RAM may be staged ahead of a start.  Each setting is taken from,
in order: a command-line flag, the environment (only where one exists), the file, the default;
`vfiotask config show` says which.  A file that is wrong in any way (syntax, an unknown key, a
wrong type, a number out of range) is one error naming the file and the key: a typo in a setting
must not silently leave the default in force.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from vfiotask.errors import UntrustedPathError, UsageError, describe_exception
from vfiotask.trust import check_path, untrusted

DEFAULT_CONFIG = Path("/etc/vfiotask/config.toml")
CONFIG_ENV = "VFIOTASK_CONFIG"
STAGING_POLICIES = ("on", "off")
METADATA_ONLY = "metadata"
FILE_BACKED_PASSTHROUGH = "file-backed-passthrough"
GUEST_POLICIES = (METADATA_ONLY, FILE_BACKED_PASSTHROUGH)
GUEST_DEFAULT_FLAGS = ("prefault", "hugepages", "device-numa")  # <vfiotask:config>'s on/off attributes
GUEST_DEFAULT_KEYS = ("threads", *GUEST_DEFAULT_FLAGS)


class Setting(NamedTuple):  # NamedTuples, not dataclasses: the hook reads settings on every start
    key: str
    default: Any
    kind: type
    help: str
    low: int | None = None
    high: int | None = None
    env: str | None = None
    choices: tuple[str, ...] = ()


SETTINGS = (
    Setting("max_threads", 0, int, "most helper threads a job uses (0: as many as the CPU policy allows)", 0, 4096),
    Setting("helper_nice", 19, int, "nice value helpers start at (19: yield to everything else)", -20, 19),
    Setting("state_dir", "/run/vfiotask", str, "where journals and bind records live", env="VFIOTASK_STATE_DIR"),
    Setting("numa_from_device", True, bool, "a guest with host devices and no <numatune> gets its RAM on the "
            "device's NUMA node"),
    Setting("staging", "on", str, "on: 'prepin --domain' may stage a stopped guest's RAM ahead of its start; off: "
            "it refuses", choices=STAGING_POLICIES),
    Setting("fault_injection", False, bool, "true: VFIOTASK_FAIL and a guest's <vfiotask:config fail=...> make "
            "chunks fail on purpose, to test undo paths; false: they are refused"),
    Setting("prepare_guests", METADATA_ONLY, str, f"{METADATA_ONLY}: the hook prepares only guests with "
            f"<vfiotask:config>; {FILE_BACKED_PASSTHROUGH}: also every guest with a PCI hostdev and file-backed RAM "
            "(OpenStack Nova's file_backed_memory), with the settings of [defaults]", choices=GUEST_POLICIES),
    Setting("defaults", {}, dict, "the settings of a guest that its <vfiotask:config> leaves out, or that has "
            f"none: {', '.join(GUEST_DEFAULT_KEYS)} (device-numa: numa_from_device when not given)"),
)
_BY_KEY = {s.key: s for s in SETTINGS}


class Value(NamedTuple):
    key: str
    value: Any
    source: str  # "default", "file", "env" or "flag"
    where: str = ""  # the file's path or the variable's name


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _bad(path: Path, what: str, hint: str) -> UsageError:
    return UsageError(f"config file {path}: {what}", hint=f"{hint}; 'vfiotask config show' lists the settings")


_KIND_NAMES = {int: "a whole number", bool: "true or false", str: "a quoted string", dict: "a table"}


def _check(path: Path, setting: Setting, value: Any) -> Any:
    """The file's value, of the setting's type and within its bounds."""
    if not isinstance(value, setting.kind) or (setting.kind is int and isinstance(value, bool)):
        raise _bad(path, f"{setting.key} = {value!r} is not {_KIND_NAMES[setting.kind]}",
                   f"write {setting.key} = {_toml(setting.default)}")
    if isinstance(value, int) and setting.low is not None and setting.high is not None \
            and not setting.low <= value <= setting.high:
        raise _bad(path, f"{setting.key} = {value} is out of range", f"give {setting.low} to {setting.high}")
    if setting.choices and value not in setting.choices:
        raise _bad(path, f"{setting.key} = {value!r} is not one of {', '.join(setting.choices)}",
                   f"write {setting.key} = {_toml(setting.default)}")
    if setting.key == "state_dir" and not str(value).isprintable():
        raise _bad(path, f"state_dir = {value!r} holds a control character", 'write e.g. state_dir = "/run/vfiotask"')
    if setting.key == "state_dir" and not Path(str(value)).is_absolute():
        raise _bad(path, f"state_dir = {value!r} is not an absolute path", 'write e.g. state_dir = "/run/vfiotask"')
    if isinstance(value, dict):
        _check_guest_defaults(path, value)
    return value


def _check_guest_defaults(path: Path, table: dict[str, Any]) -> None:
    """[defaults]: the keys of <vfiotask:config>, in TOML's types (threads a number or "auto",
    the others true or false); the guest's own attributes, when it has them, still win."""
    from vfiotask.units import MAX_THREADS

    for key, value in table.items():
        where = f"defaults.{key}"
        if key not in GUEST_DEFAULT_KEYS:
            import difflib

            close = difflib.get_close_matches(key, GUEST_DEFAULT_KEYS, n=1)
            raise _bad(path, f"unknown key {where!r}" + (f" (did you mean defaults.{close[0]}?)" if close else ""),
                       f"the keys of [defaults] are {', '.join(GUEST_DEFAULT_KEYS)}")
        if key == "threads":
            number = isinstance(value, int) and not isinstance(value, bool)
            if not (value == "auto" or (number and 1 <= value <= MAX_THREADS)):
                raise _bad(path, f"{where} = {value!r} is not \"auto\" or a whole number from 1 to {MAX_THREADS}",
                           f'write {where} = "auto" or a number of threads')
        elif not isinstance(value, bool):
            raise _bad(path, f"{where} = {value!r} is not true or false", f"write {where} = true or false")


def _check_agreement(path: Path, data: dict[str, Any]) -> None:
    """numa_from_device and defaults.device-numa say the same thing: both given and different is a mistake."""
    device_numa = data.get("defaults", {}).get("device-numa")
    if device_numa is not None and "numa_from_device" in data and data["numa_from_device"] != device_numa:
        raise _bad(path, f"defaults.device-numa = {_toml(device_numa)} contradicts numa_from_device = "
                   f"{_toml(data['numa_from_device'])}", "keep one of them")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


MAX_CONFIG_BYTES = 64 << 10  # a settings file is a few lines; anything larger is not one
_TRUST_HINT = ("make the file and every directory above it owned by root and writable by root alone "
               "(chown root:root, chmod go-w), or point VFIOTASK_CONFIG at one that is")


def _read_checked(path: Path) -> bytes:
    """The file's bytes, from one descriptor checked before it is read.

    Root takes state_dir and helper_nice from this file, so for root the file and every level
    above it (links followed: an administrator may link /etc/vfiotask to a shared checkout of
    configuration, as long as only root can change it) must be root's alone.  The open does not
    block and the descriptor must be a regular file, so a FIFO planted at the path cannot hang a
    command or the hook."""
    checked = None
    if os.geteuid() == 0:
        checked = check_path(path, "config file", _TRUST_HINT, owners=(0,))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _bad(path, f"cannot be read ({describe_exception(exc)})", "make it readable, or remove it") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _bad(path, "is not a regular file", "make it a plain file, or remove it")
        if checked is not None:
            if (info.st_dev, info.st_ino) != (checked.st_dev, checked.st_ino):
                raise UntrustedPathError(f"config file {path} changed while it was being checked; refused",
                                         hint=_TRUST_HINT)
            problem = untrusted(info, (0,))
            if problem:
                raise UntrustedPathError(f"config file {path} {problem}, so another user could change it; refused",
                                         hint=_TRUST_HINT)
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _bad(path, f"is larger than {MAX_CONFIG_BYTES >> 10} KiB", "give the settings file, not another file")
    return data


def read_file(path: Path | None = None) -> dict[str, Any]:
    """The settings the file sets, checked; {} when there is no file."""
    path = path or config_path()
    try:
        raw = _read_checked(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:  # a level of the path that is not a directory, or cannot be searched
        raise _bad(path, f"cannot be read ({describe_exception(exc)})", "make it readable, or remove it") from exc
    import tomllib  # here: most hosts have no file, and the hook reads settings on every start

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"not valid TOML ({exc})", "fix the line it names") from exc
    except UnicodeDecodeError as exc:
        raise _bad(path, f"cannot be read ({exc})", "make it readable, or remove it") from exc
    for key, value in data.items():
        setting = _BY_KEY.get(key)
        if setting is None:
            import difflib

            close = difflib.get_close_matches(key, list(_BY_KEY), n=1)
            raise _bad(path, f"unknown key {key!r}" + (f" (did you mean {close[0]}?)" if close else ""),
                       f"the keys are {', '.join(_BY_KEY)}")
        _check(path, setting, value)
    _check_agreement(path, data)
    return data


def effective(flags: dict[str, Any] | None = None) -> dict[str, Value]:
    """Every setting with the value in force and where it came from."""
    path = config_path()
    from_file = read_file(path)
    values: dict[str, Value] = {}
    for setting in SETTINGS:
        if flags and flags.get(setting.key) is not None:
            values[setting.key] = Value(setting.key, flags[setting.key], "flag")
        elif setting.env and os.environ.get(setting.env):
            if setting.key == "state_dir":
                from vfiotask.statedir import from_environment

                from_environment(os.environ[setting.env])  # refused here as where the state dir is used
            values[setting.key] = Value(setting.key, os.environ[setting.env], "env", setting.env)
        elif setting.key in from_file:
            values[setting.key] = Value(setting.key, from_file[setting.key], "file", str(path))
        else:
            values[setting.key] = Value(setting.key, setting.default, "default")
    return values


def get(key: str) -> Any:
    """One setting's value in force (flags are the caller's to apply)."""
    return effective()[key].value
