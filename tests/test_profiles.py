"""SPEC §2: the profile store, its search path, its format and its errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lbprovider.config import DEFAULT_FAILURE_WINDOW_MS, Policy
from lbprovider.errors import (
    ConfigError,
    ProfileFormatError,
    ProfileNameError,
    ProfileNotFoundError,
    ProfileValidationError,
)
from lbprovider.paths import home_dir, profile_search_dirs
from lbprovider.profiles import files as ps_module
from lbprovider.profiles.keys import resolve_key
from lbprovider.profiles.models import LoadBalancerProfile
from lbprovider.profiles.resolve import outline
from lbprovider.profiles.store import ProfileStore
from lbprovider.redaction import redact, redact_profile
from lbprovider.settings import DEFAULT_FAILOVER_STATUS_CODES, LBSettings
from tests.conftest import SIM_KEY, WriteProfile, lb, member

# -- home and search path ------------------------------------------------------------------


def test_home_from_env(isolated: Path) -> None:
    """LBPROVIDER_HOME wins."""
    assert home_dir() == isolated


def test_home_default_is_user_config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without LBPROVIDER_HOME the platform config dir is used (~/.config/lbprovider)."""
    monkeypatch.delenv("LBPROVIDER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert home_dir() == tmp_path / ".config" / "lbprovider"


def test_search_order(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, write_profile: WriteProfile
) -> None:
    """Env path dirs, then the nearest project dir walking up, then home; first hit wins."""
    env1, env2 = tmp_path / "e1", tmp_path / "e2"
    project = tmp_path / "proj"
    nested = project / "src" / "deep"
    nested.mkdir(parents=True)
    proj_profiles = project / ".lbprovider" / "profiles"
    monkeypatch.setenv("LBPROVIDER_PROFILES_PATH", os.pathsep.join([str(env1), str(env2)]))
    monkeypatch.chdir(nested)
    assert profile_search_dirs() == [env1, env2, isolated / "profiles"]
    proj_profiles.mkdir(parents=True)
    assert profile_search_dirs() == [env1, env2, proj_profiles, isolated / "profiles"]

    write_profile("m", member(model="home"))
    store = ProfileStore()
    assert store.load("m")[1].model == "home"  # type: ignore[union-attr]
    write_profile("m", member(model="project"), proj_profiles)
    assert ProfileStore().load("m")[1].model == "project"  # type: ignore[union-attr]
    write_profile("m", member(model="env2"), env2)
    assert ProfileStore().load("m")[1].model == "env2"  # type: ignore[union-attr]
    write_profile("m", member(model="env1"), env1)
    entries = ProfileStore().entries()
    assert [e.name for e in entries] == ["m"]
    assert entries[0].path == env1 / "m.json"
    assert len(entries[0].shadowed) == 3


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".hidden", "", "-x", "a..b", "x y"])
def test_bad_names_refused(name: str, profiles_dir: Path) -> None:
    """A profile name never becomes an arbitrary path."""
    with pytest.raises(ProfileNameError, match="invalid profile name"):
        ProfileStore().find(name)


def test_good_names(write_profile: WriteProfile) -> None:
    """Letters, digits, dot, underscore and dash are fine."""
    write_profile("Prod_1.backup-2", member())
    assert ProfileStore().find("Prod_1.backup-2") is not None


def test_not_found_names_search_path(profiles_dir: Path) -> None:
    """A missing profile names the directories searched and what to do."""
    with pytest.raises(ProfileNotFoundError) as info:
        ProfileStore().load("nope")
    assert str(profiles_dir) in str(info.value)
    assert "LBPROVIDER_PROFILES_PATH" in str(info.value)


# -- files -----------------------------------------------------------------------------------


def test_truncated_json_names_line_and_column(write_profile: WriteProfile) -> None:
    """A truncated file is reported with its path, line and column."""
    path = write_profile("broken", '{\n  "version": 1,\n  "provider": "openai",\n  "mod')
    with pytest.raises(ProfileFormatError) as info:
        ProfileStore().load("broken")
    assert info.value.file == path
    assert (info.value.line, info.value.column) == (4, 3)
    assert f"{path}" in str(info.value) and "line 4 column 3" in str(info.value)


@pytest.mark.parametrize("content", ["[]", "3", '"x"'])
def test_not_an_object(write_profile: WriteProfile, content: str) -> None:
    """A profile must be a JSON object."""
    write_profile("odd", content)
    with pytest.raises(ProfileValidationError, match="must be a JSON object"):
        ProfileStore().load("odd")


def test_atomic_write_mode_0600(profiles_dir: Path, write_profile: WriteProfile) -> None:
    """Writes land with mode 0600 and leave no temp files."""
    write_profile("a", member())
    write_profile("b", member())
    path, _ = ProfileStore().save_loadbalancer("both", policy="failover", members=["a", "b"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in profiles_dir.iterdir()) == ["a.json", "b.json", "both.json"]


def test_failed_write_leaves_old_file(
    write_profile: WriteProfile, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in the middle of a write keeps the previous file whole and no temp file."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("c", member())
    path = write_profile("pair", lb(["a", "b"]))
    before = path.read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ps_module.json, "dump", boom)
    with pytest.raises(ConfigError, match="disk full") as info:
        ProfileStore().push("pair", "c")
    assert info.value.file == path
    assert path.read_text() == before
    assert sorted(p.name for p in profiles_dir.iterdir()) == [
        "a.json",
        "b.json",
        "c.json",
        "pair.json",
    ]


# -- member profiles ---------------------------------------------------------------------------


def test_member_resolution(write_profile: WriteProfile) -> None:
    """provider/model becomes the litellm model; base-url the api_base; params merge."""
    m = member(base_url="http://127.0.0.1:8001/v1", model="gpt-4o-mini")
    m["modelParams"] = {"temperature": 0.2, "max_tokens": 1024}
    write_profile("m1", m)
    write_profile("m2", member())
    data = lb(["m1", "m2"])
    data["modelParams"] = {"temperature": 0.9}
    write_profile("pair", data)
    config = ProfileStore().load_loadbalancer("pair")
    first = config.members[0]
    assert first.litellm_model == "openai/gpt-4o-mini"
    assert first.api_base == "http://127.0.0.1:8001/v1"
    assert dict(first.model_params) == {"temperature": 0.9, "max_tokens": 1024}
    assert first.api_key is not None and first.api_key.get_secret_value() == SIM_KEY
    assert SIM_KEY not in repr(first)


def test_key_resolution_order(
    write_profile: WriteProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth-key, then auth-keyfile (~ expanded, stripped), then auth-key-env, else None."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".keys").mkdir()
    (tmp_path / ".keys" / "k").write_text("  sk-from-file-aaaa\n")
    monkeypatch.setenv("MY_KEY", "sk-from-env-bbbb")
    write_profile(
        "all",
        member(key="sk-inline-cccc", **{"auth-keyfile": "~/.keys/k", "auth-key-env": "MY_KEY"}),
    )
    write_profile(
        "file_env", member(key=None, **{"auth-keyfile": "~/.keys/k", "auth-key-env": "MY_KEY"})
    )
    write_profile("env", member(key=None, **{"auth-key-env": "MY_KEY"}))
    write_profile("none", member(key=None))
    write_profile("lbx", lb(["all", "file_env", "env", "none"]))
    keys = [
        m.api_key.get_secret_value() if m.api_key else None
        for m in ProfileStore().load_loadbalancer("lbx").members
    ]
    assert keys == ["sk-inline-cccc", "sk-from-file-aaaa", "sk-from-env-bbbb", None]


def test_missing_keyfile_error(write_profile: WriteProfile) -> None:
    """An unreadable key file names the member file and the field; the member is left
    out with that reason (SPEC §2.2), and a failover left with one member is an error."""
    path = write_profile("m", member(key=None, **{"auth-keyfile": "/nonexistent/key"}))
    write_profile("m2", member())
    write_profile("m3", member())
    write_profile("pair", lb(["m", "m2"]))
    write_profile("trio", lb(["m", "m2", "m3"]))
    parsed = ProfileStore().load("m")[1]
    with pytest.raises(ConfigError) as info:
        resolve_key(parsed, file=path)  # type: ignore[arg-type]
    assert info.value.file == path
    assert info.value.field == "ephemeralSettings.auth-keyfile"
    assert "/nonexistent/key" in str(info.value)
    config = ProfileStore().load_loadbalancer("trio")
    assert config.member_names == ["m2", "m3"]
    assert "'m' left out" in config.warnings[0] and "/nonexistent/key" in config.warnings[0]
    with pytest.raises(ConfigError, match="needs at least 2 usable members, 1 left"):
        ProfileStore().load_loadbalancer("pair")


def test_unset_key_env_error(write_profile: WriteProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    """auth-key-env naming an unset variable says which variable to export."""
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    write_profile("m", member(key=None, **{"auth-key-env": "NOT_SET_KEY"}))
    write_profile("m2", member())
    write_profile("pair", lb(["m", "m2"]))
    with pytest.raises(ConfigError, match="export NOT_SET_KEY"):
        ProfileStore().load_loadbalancer("pair")


def test_unknown_member_settings_kept(write_profile: WriteProfile) -> None:
    """Unknown ephemeralSettings (llxprt's many) are kept and ignored."""
    write_profile("m", member(**{"shell-replacement": True, "streaming": "disabled"}))
    _, profile = ProfileStore().load("m")
    assert profile.ephemeralSettings.model_extra == {  # type: ignore[union-attr]
        "shell-replacement": True,
        "streaming": "disabled",
    }


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"base-url": 5}, "ephemeralSettings.base-url"),
        ({"base-url": "ftp://x"}, "ephemeralSettings.base-url"),
        ({"context-limit": -1}, "ephemeralSettings.context-limit"),
        ({"auth-key-env": "sk-looks-like-a-key"}, "ephemeralSettings.auth-key-env"),
        ({"auth-key": ""}, "ephemeralSettings.auth-key"),
    ],
)
def test_known_member_key_bad_value(
    write_profile: WriteProfile, settings: dict[str, object], field: str
) -> None:
    """A known key with a bad value names the file and the key."""
    path = write_profile("m", member(**settings))
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load("m")
    assert info.value.file == path
    assert info.value.field == field
    assert str(path) in str(info.value) and field in str(info.value)


def test_member_requires_provider_and_model(write_profile: WriteProfile) -> None:
    """provider and model are required; every missing one is reported."""
    write_profile("m", {"version": 1, "ephemeralSettings": {}})
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load("m")
    assert "provider" in str(info.value) and "model" in str(info.value)


# -- load-balancer profiles --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("failover", Policy.FAILOVER),
        ("FailOver", Policy.FAILOVER),
        ("roundrobin", Policy.ROUNDROBIN),
        ("round-robin", Policy.ROUNDROBIN),
        ("RoundRobin", Policy.ROUNDROBIN),
    ],
)
def test_policy_spellings(write_profile: WriteProfile, policy: str, expected: Policy) -> None:
    """Policies are case-insensitive and accept round-robin."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("x", lb(["a", "b"], policy=policy))
    assert ProfileStore().load_loadbalancer("x").policy is expected


def test_bad_policy(write_profile: WriteProfile) -> None:
    """An unknown policy names the field."""
    write_profile("a", member())
    path = write_profile("x", lb(["a"], policy="random"))
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load_loadbalancer("x")
    assert info.value.field == "policy" and info.value.file == path


def test_inline_members(write_profile: WriteProfile) -> None:
    """A self-contained file: members written inline with a name."""
    write_profile(
        "solo", lb([{"name": "one", **member(model="m1")}, {"name": "two", **member(model="m2")}])
    )
    config = ProfileStore().load_loadbalancer("solo")
    assert config.member_names == ["one", "two"]
    assert config.members[1].litellm_model == "openai/m2"


def test_inline_member_error_names_path(write_profile: WriteProfile) -> None:
    """An inline member's bad field is named under profiles[i]."""
    bad = {"name": "two", **member()}
    bad["ephemeralSettings"]["context-limit"] = "lots"
    path = write_profile("solo", lb([{"name": "one", **member()}, "x", bad]))
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load_loadbalancer("solo")
    assert info.value.field == "profiles[2].ephemeralSettings.context-limit"
    assert info.value.file == path


def test_bad_entry_type(write_profile: WriteProfile) -> None:
    """A member entry that is neither a name nor an object is named."""
    write_profile("a", member())
    write_profile("x", lb(["a", 7]))
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load_loadbalancer("x")
    assert info.value.field == "profiles[1]"


def test_bad_member_name_in_lb(write_profile: WriteProfile) -> None:
    """A path-like member name is refused with its field path."""
    write_profile("a", member())
    write_profile("x", lb(["a", "../../etc/passwd"]))
    with pytest.raises(ProfileNameError) as info:
        ProfileStore().load_loadbalancer("x")
    assert info.value.field == "profiles[1]"


def test_nesting_refused(write_profile: WriteProfile) -> None:
    """A member that is itself a load balancer is refused (no nesting)."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("inner", lb(["a", "b"]))
    path = write_profile("outer", lb(["a", "inner"]))
    with pytest.raises(ConfigError, match="do not nest") as info:
        ProfileStore().load_loadbalancer("outer")
    assert info.value.field == "profiles[1]" and info.value.file == path


def test_inline_nesting_refused(write_profile: WriteProfile) -> None:
    """An inline load balancer is refused too."""
    write_profile("x", lb([{"name": "n", **lb(["a"])}, {"name": "m", **member()}]))
    with pytest.raises(ConfigError, match="no nesting"):
        ProfileStore().load_loadbalancer("x")


def test_missing_member_warns(write_profile: WriteProfile) -> None:
    """A missing member is dropped with a warning naming it; the rest load."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("x", lb(["a", "ghost", "b"]))
    config = ProfileStore().load_loadbalancer("x")
    assert config.member_names == ["a", "b"]
    assert any("ghost" in w and "profiles[1]" in w for w in config.warnings)


def test_too_few_members_for_failover(write_profile: WriteProfile) -> None:
    """failover needs 2 usable members; roundrobin needs 1."""
    write_profile("a", member())
    write_profile("fo", lb(["a", "ghost"]))
    write_profile("rr", lb(["a", "ghost"], policy="roundrobin"))
    with pytest.raises(ProfileValidationError, match="at least 2") as info:
        ProfileStore().load_loadbalancer("fo")
    assert info.value.field == "profiles" and "ghost" in str(info.value)
    assert ProfileStore().load_loadbalancer("rr").member_names == ["a"]


def test_nothing_usable(write_profile: WriteProfile) -> None:
    """An error when nothing usable is left."""
    write_profile("rr", lb(["ghost1", "ghost2"], policy="roundrobin"))
    with pytest.raises(ProfileValidationError, match="needs a usable member"):
        ProfileStore().load_loadbalancer("rr")


def test_duplicates_keep_first(write_profile: WriteProfile) -> None:
    """Duplicate names keep their first position, with a warning."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("x", lb(["a", "b", "a"]))
    config = ProfileStore().load_loadbalancer("x")
    assert config.member_names == ["a", "b"]
    assert any("duplicate" in w and "profiles[2]" in w for w in config.warnings)


def test_member_used_as_lb(write_profile: WriteProfile) -> None:
    """Routing through a member profile says it is not a load balancer."""
    write_profile("a", member())
    with pytest.raises(ConfigError, match="not a load balancer"):
        ProfileStore().load_loadbalancer("a")


# -- settings ------------------------------------------------------------------------------------


def test_settings_defaults(write_profile: WriteProfile) -> None:
    """Every setting has the SPEC §2.3 default."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("x", lb(["a", "b"]))
    s = ProfileStore().load_loadbalancer("x").settings
    assert s.failover_retry_count == 2
    assert s.failover_retry_delay_ms == 0
    assert s.failover_on_network_errors is True
    assert s.failover_status_codes == DEFAULT_FAILOVER_STATUS_CODES
    assert 429 in s.failover_status_codes and 599 in s.failover_status_codes
    assert 400 not in s.failover_status_codes
    assert s.timeout_ms is None and s.first_chunk_timeout_s is None
    assert s.tpm_threshold is None
    assert s.circuit_breaker_enabled is False
    assert s.circuit_breaker_failure_threshold == 3
    assert s.circuit_breaker_failure_window_ms == 60_000
    assert s.circuit_breaker_recovery_timeout_ms == 30_000
    assert s.circuit_breaker_max_recovery_timeout_ms == 300_000


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("failover_retry_count", 0),
        ("failover_retry_count", 101),
        ("failover_retry_count", "2"),
        ("failover_retry_delay_ms", -1),
        ("failover_on_network_errors", "yes"),
        ("failover_status_codes", [429, 700]),
        ("timeout_ms", -5),
        ("tpm_threshold", -1),
        ("circuit_breaker_enabled", 1),
        ("circuit_breaker_failure_threshold", 0),
        ("circuit_breaker_failure_window_ms", 0),
        ("circuit_breaker_recovery_timeout_ms", 0),
    ],
)
def test_settings_bounds(write_profile: WriteProfile, key: str, value: object) -> None:
    """A setting out of bounds names the file and ephemeralSettings.KEY."""
    write_profile("a", member())
    write_profile("b", member())
    path = write_profile("x", lb(["a", "b"], **{key: value}))
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load_loadbalancer("x")
    assert info.value.file == path
    assert info.value.field is not None
    assert info.value.field.startswith(f"ephemeralSettings.{key}")


def test_settings_accepted_edges(write_profile: WriteProfile) -> None:
    """Edge values inside the bounds are accepted; 0 turns timeout and TPM off."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile(
        "x",
        lb(
            ["a", "b"],
            failover_retry_count=100,
            timeout_ms=0,
            tpm_threshold=0,
            failover_status_codes=[429, 503],
            lb_custom_thing=1,
        ),
    )
    s = ProfileStore().load_loadbalancer("x").settings
    assert s.failover_retry_count == 100
    assert s.first_chunk_timeout_s is None
    assert s.failover_status_codes == (429, 503)
    assert s.extra_keys == {"lb_custom_thing": 1}


def test_recovery_cap_below_start(write_profile: WriteProfile) -> None:
    """The max recovery time may not be below the first recovery time."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile(
        "x",
        lb(
            ["a", "b"],
            circuit_breaker_recovery_timeout_ms=5000,
            circuit_breaker_max_recovery_timeout_ms=1000,
        ),
    )
    with pytest.raises(ProfileValidationError, match="max_recovery"):
        ProfileStore().load_loadbalancer("x")


# -- validate, edits, redaction ----------------------------------------------------------------


def test_validate_reports_each_problem(write_profile: WriteProfile) -> None:
    """validate() checks every profile and reports each one's problem."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("good", lb(["a", "b"]))
    write_profile("trunc", '{"version": 1,')
    write_profile("bad", lb(["a", "b"], timeout_ms="soon"))
    results = {r.name: r for r in ProfileStore().validate()}
    assert set(results) == {"a", "b", "good", "trunc", "bad"}
    assert results["good"].ok and results["a"].ok
    assert not results["trunc"].ok and not results["bad"].ok
    assert "timeout_ms" in str(results["bad"].errors[0])


def test_validate_warns_on_near_miss_setting(write_profile: WriteProfile) -> None:
    """A misspelt known setting is flagged (still ignored, as unknown keys are)."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("x", lb(["a", "b"], timout_ms=100))
    (result,) = ProfileStore().validate(["x"])
    assert result.ok
    assert any("timeout_ms" in w for w in result.warnings)


def test_push_pop_keep_unknown_keys_and_secrets(write_profile: WriteProfile) -> None:
    """Edits work on the raw file: unknown keys and inline keys survive untouched."""
    write_profile("c", member())
    data = lb(
        [{"name": "one", **member(key="sk-inline-secret-9999")}, {"name": "two", **member()}],
        custom_setting="kept",
    )
    data["llxprtExtra"] = {"x": 1}
    path = write_profile("x", data)
    store = ProfileStore()
    store.push("x", "c")
    saved = json.loads(path.read_text())
    assert saved["profiles"][2] == "c"
    assert saved["llxprtExtra"] == {"x": 1}
    assert saved["ephemeralSettings"]["custom_setting"] == "kept"
    assert saved["profiles"][0]["ephemeralSettings"]["auth-key"] == "sk-inline-secret-9999"
    _, removed, config = store.pop("x")
    assert removed == "c" and config.member_names == ["one", "two"]


def test_redaction() -> None:
    """Keys show at most their last 4 characters; short keys show nothing."""
    assert redact("sk-abcdefghijkl1234") == "****1234"
    assert redact("short") == "****"
    out = redact_profile(
        {
            "ephemeralSettings": {
                "auth-key": "sk-abcdefghijkl1234",
                "auth-keyfile": "~/k",
                "api_key": "sk-zzzzzzzzzzzz9876",
            },
            "profiles": [{"ephemeralSettings": {"auth-key": "sk-qqqqqqqqqqqq5555"}}],
        }
    )
    text = json.dumps(out)
    assert "abcdefghijkl" not in text and "zzzzzzzz" not in text and "qqqqqqqq" not in text
    assert out["ephemeralSettings"]["auth-keyfile"] == "~/k"


# -- a report's outline (no keys, no pydantic) ----------------------------------------------


def test_outline_matches_full_resolution(
    write_profile: WriteProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain profile's light outline is what full resolution without keys gives,
    including a member whose key is not set here and the duplicate/missing warnings."""
    monkeypatch.delenv("LB_TEST_UNSET_KEY", raising=False)
    write_profile("a", member())
    write_profile("b", member(model="other", key=None, **{"auth-key-env": "LB_TEST_UNSET_KEY"}))
    write_profile("pair", lb(["a", "b", "a", "ghost"], circuit_breaker_failure_window_ms=5000))
    store = ProfileStore()
    path, raw = store.path_of("pair"), store.read_raw(store.path_of("pair"))
    light = outline("pair", raw, source=store, file=path)
    assert light is not None
    _, profile = store.load("pair")
    assert isinstance(profile, LoadBalancerProfile)
    full = store.resolve("pair", profile, file=path, keys=False).outline
    assert (light.name, light.policy, dict(light.models)) == (
        full.name,
        full.policy,
        dict(full.models),
    )
    assert dict(light.models) == {"a": "openai/sim-model", "b": "openai/other"}
    assert light.failure_window_ms == full.failure_window_ms == 5000
    assert [w for w in full.warnings if "left out" not in w] == list(light.warnings)


@pytest.mark.parametrize(
    ("data", "valid"),
    [
        (lb([{"name": "inline", "provider": "openai", "model": "m"}, "a"]), True),
        (lb(["a", "b"], policy="Round-Robin"), True),
        (lb(["a", "b"], circuit_breaker_failure_window_ms="soon"), False),
        ({**lb(["a", "b"]), "version": True}, False),
    ],
)
def test_outline_leaves_what_it_does_not_understand_to_full_resolution(
    write_profile: WriteProfile, data: dict[str, object], valid: bool
) -> None:
    """An inline member, a non-canonical policy or an odd setting is not read lightly;
    ProfileStore.outline then resolves in full, so its errors are the usual ones."""
    write_profile("a", member())
    write_profile("b", member())
    path = write_profile("odd", data)
    store = ProfileStore()
    assert outline("odd", store.read_raw(path), source=store, file=path) is None
    if valid:
        assert store.outline("odd").member_names
    else:
        with pytest.raises(ProfileValidationError) as info:
            store.outline("odd")
        assert info.value.file == path


def test_outline_keeps_the_minimum_members_rule(write_profile: WriteProfile) -> None:
    """The light outline applies the same minimum-members rule, with the same message."""
    write_profile("a", member())
    write_profile("lonely", lb(["a", "ghost"]))
    with pytest.raises(ProfileValidationError, match="needs at least 2 usable members, 1 left"):
        ProfileStore().outline("lonely")
    with pytest.raises(ProfileValidationError, match="needs at least 2 usable members, 1 left"):
        ProfileStore().load_loadbalancer("lonely")


def test_report_default_window_is_the_settings_default() -> None:
    """The window a report assumes without LBSettings is LBSettings' default."""
    assert LBSettings().circuit_breaker_failure_window_ms == DEFAULT_FAILURE_WINDOW_MS
