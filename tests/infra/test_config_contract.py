"""Issue 9: every app setting the binary reads is set by main.bicep.

The binary reads its settings in src/config.rs, each through `var("NAME")`,
`parse("NAME", default, ..)` or `required("NAME", ..)`. These tests extract the
names from the source and hold them against the app settings contract,
infra/app-settings.json (which tests/infra/test_bicep.py holds against
main.bicep, both ways):

  (a) every name config.rs reads is in the contract with readBy binary/both,
      or listed in STANDALONE_ONLY below with the reason Azure goes without it;
  (b) every contract entry with readBy binary/both is really read (no stale
      settings): by src/config.rs, or by one of OTHER_READERS;
  (c) every contract name, and every name config.rs reads (but the few in
      NOT_IN_EXAMPLE), has a safe example in local.settings.json.example;
      tests/functions/test_package.py then requires a row in the settings
      table of docs/functions.md for every example setting.

Each check is a function `check_*(repo) -> list[str]` (problems found);
test_mutation_is_caught breaks a copy of the files in one place per case and
asserts the matching check notices, so none can pass vacuously.

Run:  bash scripts/setup-python.sh && .venv/bin/python -m pytest tests/infra -q
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CONFIG_RS = "src/config.rs"
CONTRACT = "infra/app-settings.json"
EXAMPLE = "local.settings.json.example"
READ_BY = {"binary", "host", "both"}

# Read by config.rs, deliberately NOT an app setting of the Function App: on Azure the
# default (or the host) is right, and setting them there would be wrong or meaningless.
STANDALONE_ONLY = {
    # Set by the Functions host itself to the port it forwards to; an app setting would be
    # overridden at best and point the host at the wrong port at worst.
    "FUNCTIONS_CUSTOMHANDLER_PORT": "set by the Functions host",
    # The app's region, set by the App Service / Functions platform on every instance; the
    # Cosmos client uses it to prefer the nearest region. Setting it ourselves could only lie.
    "REGION_NAME": "set by the Azure platform",
    # Standalone listen port; under the host the binary listens on FUNCTIONS_CUSTOMHANDLER_PORT.
    "PORT": "standalone listen port",
    # Standalone listen address; under the host the default 127.0.0.1 is exactly right
    # (the host talks to the handler over loopback, nothing else may).
    "BIND_ADDR": "standalone listen address",
    # Folder of the embedded SQLite file (STORE=sqlite); Azure runs on Cosmos.
    "DATA_DIR": "SQLite folder; Azure uses STORE=cosmos",
    # Cosmos key auth, only for local tests against an emulator/test account: the account
    # has disableLocalAuth=true and the app uses its managed identity (AZURE_CLIENT_ID).
    "COSMOS_KEY": "local key auth for tests; Azure uses the managed identity",
    # Lets webhooks target loopback/private addresses (local testing). Azure must keep the
    # default false (SSRF protection), so it is left unset there.
    "WEBHOOK_ALLOW_LOOPBACK": "local testing only; Azure keeps the safe default false",
    # Interval of the standalone in-process webhook dispatcher. Under Functions that
    # dispatcher is off and the WebhookDispatch timer (WEBHOOK_DISPATCH_SCHEDULE) drives it.
    "WEBHOOK_DISPATCH_INTERVAL_MS": "standalone dispatcher; Functions uses WEBHOOK_DISPATCH_SCHEDULE",
    # Interval of the standalone incremental sync loop. Under Functions the loop is off and
    # the IncrementalSync timer (INCREMENTAL_SYNC_SCHEDULE) enqueues the job.
    "INCREMENTAL_SYNC_INTERVAL_SECONDS": "standalone loop; Functions uses INCREMENTAL_SYNC_SCHEDULE",
}

# Contract settings (readBy binary/both) the binary reads outside src/config.rs:
# name -> (file, exact text that reads it). Check (b) accepts them only while that text is there.
OTHER_READERS = {
    # The tracing filter is read by tracing-subscriber's EnvFilter, not by Config.
    "RUST_LOG": ("src/lib.rs", 'EnvFilter::try_from_env("RUST_LOG")'),
}

# Names config.rs reads that local.settings.json.example must NOT carry.
NOT_IN_EXAMPLE = {
    # The host sets it when it starts the handler; a value in local settings would fight it.
    "FUNCTIONS_CUSTOMHANDLER_PORT": "set by the Functions host",
    # A credential: never in a committed file (tests set it in their own environment).
    "COSMOS_KEY": "credential",
    # Set by the platform in Azure; meaningless on a developer's machine.
    "REGION_NAME": "set by the Azure platform",
}

# Reading a setting: var("N"), parse("N", ..), required("N", ..), or std::env directly.
READ_CALL = re.compile(r'(?<![\w.])(?:(?:std::)?env::(?:var|var_os)|var|parse|required)\(\s*"([^"]+)"')
# Any call of the helpers, to find reads whose name is not a literal.
ANY_CALL = re.compile(r'(?<![\w.])(?:(?:std::)?env::(?:var|var_os)|var|parse|required)\(\s*([^)\s,:]*)')
# Reads of the environment anywhere in src/ (outside config.rs they must be OTHER_READERS).
ENV_READ = re.compile(r'(?:env::(?:var|var_os)|from_env|try_from_env)\(\s*"([^"]+)"')

# Rust comments (but not `//` inside string literals such as "https://").
_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.S)


def strip_comments(src: str) -> str:
    return _TOKENS.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", src)


def config_source(repo: Path) -> str:
    return strip_comments((repo / CONFIG_RS).read_text(encoding="utf-8"))


def names_read_by_config(repo: Path) -> set[str]:
    return set(READ_CALL.findall(config_source(repo)))


def contract(repo: Path) -> list[dict]:
    return json.loads((repo / CONTRACT).read_text(encoding="utf-8"))


def contract_binary_names(repo: Path) -> set[str]:
    return {e["name"] for e in contract(repo) if e.get("readBy") in ("binary", "both")}


def example_values(repo: Path) -> dict:
    return json.loads((repo / EXAMPLE).read_text(encoding="utf-8"))["Values"]


# ----------------------------------------------------------------- checks


def check_extraction(repo: Path) -> list[str]:
    """The extraction sees config.rs's reads: a floor of known names, and no read whose
    name is not a literal (it could not be held against the contract)."""
    problems = []
    src = config_source(repo)
    names = set(READ_CALL.findall(src))
    for known in ("STORE", "PORT", "COSMOS_ENDPOINT", "KEYVAULT_URL", "TOKEN_TTL_SECONDS"):
        if known not in names:
            problems.append(f"{CONFIG_RS}: expected a read of {known}; the extraction found {sorted(names)}")
    for m in ANY_CALL.finditer(src):
        arg = m.group(1)
        if arg.startswith('"'):
            continue
        # `fn var(name: &str)` itself, and the helpers passing their own `name` along.
        if arg == "name":
            continue
        line = src.count("\n", 0, m.start()) + 1
        problems.append(f"{CONFIG_RS}:{line}: setting read through a non-literal name {arg!r}: "
                        "read every setting as var(\"NAME\") so the contract can list it")
    return problems


def check_read_settings_are_in_contract(repo: Path) -> list[str]:
    """(a) Every name config.rs reads is set on Azure or is standalone-only."""
    problems = []
    entries = {e.get("name"): e for e in contract(repo)}
    for name in sorted(names_read_by_config(repo)):
        if name in STANDALONE_ONLY:
            if name in entries:
                problems.append(f"{name} is in {CONTRACT} but listed as STANDALONE_ONLY "
                                f"({STANDALONE_ONLY[name]}): decide which")
            continue
        e = entries.get(name)
        if e is None:
            problems.append(f"{CONFIG_RS} reads {name}, but {CONTRACT} does not list it "
                            "(add it there and to main.bicep, or to STANDALONE_ONLY with a reason)")
        elif e.get("readBy") not in ("binary", "both"):
            problems.append(f"{CONFIG_RS} reads {name}, but {CONTRACT} says readBy {e.get('readBy')!r}")
    return problems


def check_contract_settings_are_read(repo: Path) -> list[str]:
    """(b) No stale settings: every binary/both entry is read by the binary."""
    problems = []
    for i, e in enumerate(contract(repo)):
        if e.get("readBy") not in READ_BY:
            problems.append(f"{CONTRACT}[{i}] {e.get('name')}: readBy must be one of {sorted(READ_BY)}, "
                            f"got {e.get('readBy')!r}")
    read = names_read_by_config(repo)
    for name in sorted(contract_binary_names(repo) - read):
        other = OTHER_READERS.get(name)
        if other is not None:
            path, text = other
            if text in strip_comments((repo / path).read_text(encoding="utf-8")):
                continue
            problems.append(f"{name}: OTHER_READERS says {path} reads it with {text!r}, but it does not")
            continue
        problems.append(f"{CONTRACT} says the binary reads {name}, but {CONFIG_RS} does not "
                        "(stale: remove it, or set readBy host if only the Functions host uses it)")
    # Stray reads of the environment outside config.rs must be the known ones.
    for path in sorted((repo / "src").rglob("*.rs")):
        rel = path.relative_to(repo).as_posix()
        if rel == CONFIG_RS:
            continue
        for name in ENV_READ.findall(strip_comments(path.read_text(encoding="utf-8"))):
            if OTHER_READERS.get(name, ("",))[0] != rel:
                problems.append(f"{rel} reads {name} from the environment: settings are read in "
                                f"{CONFIG_RS} (or listed in OTHER_READERS with the contract entry)")
    return problems


def check_example_lists_settings(repo: Path) -> list[str]:
    """(c) The example carries every contract name and every name config.rs reads."""
    problems = []
    values = example_values(repo)
    for name in sorted({e["name"] for e in contract(repo)} - set(values)):
        problems.append(f"{name} ({CONTRACT}) has no example value in {EXAMPLE}")
    for name in sorted(names_read_by_config(repo) - set(values) - set(NOT_IN_EXAMPLE)):
        problems.append(f"{CONFIG_RS} reads {name}, but {EXAMPLE} has no example value for it")
    for name in sorted(set(NOT_IN_EXAMPLE) & set(values)):
        problems.append(f"{EXAMPLE} must not set {name} ({NOT_IN_EXAMPLE[name]})")
    return problems


CHECKS = {
    "extraction": check_extraction,
    "read_in_contract": check_read_settings_are_in_contract,
    "contract_read": check_contract_settings_are_read,
    "example": check_example_lists_settings,
}


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", CHECKS)
def test_check(name: str):
    problems = CHECKS[name](REPO)
    assert not problems, "\n".join(problems)


def test_extraction_finds_exactly_the_calls_with_literal_names():
    src = strip_comments(
        '//! read via `var("DOC_ONLY")`\n'
        'fn var(name: &str) -> Option<String> { std::env::var(name).ok() }\n'
        'fn parse<T>(name: &str, d: T, p: &mut Vec<String>) -> T { var(name); d }\n'
        'let a = var("A").filter(|u| u.starts_with("https://")); let b = parse("B", 1u8, &mut p);\n'
        'let c = required("C", &mut p); /* var("BLOCK") */ let d = x.parse::<u8>(); let e = std::env::var("E");\n'
    )
    assert set(READ_CALL.findall(src)) == {"A", "B", "C", "E"}


def test_standalone_only_settings_are_really_read():
    # A stale exception would hide nothing today but excuse a future mistake.
    stale = sorted((set(STANDALONE_ONLY) | set(NOT_IN_EXAMPLE)) - names_read_by_config(REPO))
    assert not stale, f"listed as exceptions but not read by {CONFIG_RS}: {stale}"


def test_every_check_is_exercised_by_a_mutation():
    assert {m[3] for m in MUTATIONS} == set(CHECKS)


# (id, file, old text, check that must then fail, new text)
MUTATIONS = [
    ("non-literal-name", CONFIG_RS, 'var("JWT_AUDIENCE")', "extraction", "var(&audience_setting)"),
    ("new-setting-not-in-contract", CONFIG_RS, 'parse("TOKEN_TTL_SECONDS", 3600u64, &mut p)', "read_in_contract",
     'parse("TOKEN_TTL_SECONDS", 3600u64, &mut p) + parse("NEW_UNLISTED_SECONDS", 0u64, &mut p)'),
    ("contract-entry-dropped", CONTRACT, '{ "name": "CONNECTOR_MAX_ATTEMPTS",', "read_in_contract",
     '{ "name": "CONNECTOR_MAX_ATTEMPTS_OLD",'),
    ("read-by-host", CONTRACT, '{ "name": "TOKEN_RATE_LIMIT_PER_MINUTE", "readBy": "binary"', "read_in_contract",
     '{ "name": "TOKEN_RATE_LIMIT_PER_MINUTE", "readBy": "host"'),
    ("standalone-and-contract", CONTRACT, '{ "name": "RUST_LOG"', "read_in_contract",
     '{ "name": "PORT", "readBy": "binary", "description": "x" },\n  { "name": "RUST_LOG"'),
    ("stale-contract-entry", CONTRACT, '{ "name": "RUST_LOG"', "contract_read",
     '{ "name": "NO_LONGER_READ", "readBy": "binary", "description": "x" },\n  { "name": "RUST_LOG"'),
    ("read-no-longer", CONFIG_RS, 'var("CORS_ALLOWED_ORIGINS")', "contract_read", 'Some(String::new())'),
    ("other-reader-gone", "src/lib.rs", 'EnvFilter::try_from_env("RUST_LOG")', "contract_read",
     'EnvFilter::try_from_env("LOG_FILTER")'),
    ("bad-read-by", CONTRACT, '"readBy": "host"', "contract_read", '"readBy": "hots"'),
    ("example-missing-contract", EXAMPLE, '    "CONNECTOR_TIMEOUT_MS":', "example", '    "CONNECTOR_TIMEOUT":'),
    ("example-missing-standalone", EXAMPLE, '    "BIND_ADDR":', "example", '    "BIND_ADDRESS":'),
    ("example-has-key", EXAMPLE, '  "Values": {\n', "example", '  "Values": {\n    "COSMOS_KEY": "",\n'),
]


@pytest.mark.parametrize("case", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_is_caught(case, tmp_path: Path):
    case_id, rel, old, check, new = case
    for part in ("src", "infra"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("target"))
    shutil.copy(REPO / EXAMPLE, tmp_path / EXAMPLE)
    target = tmp_path / rel
    text = target.read_text(encoding="utf-8")
    assert text.count(old) >= 1, f"mutation {case_id}: {old!r} not found in {rel}"
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    assert not CHECKS[check](REPO), f"the real repository must pass check {check}"
    assert CHECKS[check](tmp_path), f"check {check} did not notice mutation {case_id}"
