"""The Azure Functions side of Customer360: host.json, function folders, local settings, packaging.

No Functions host can run here, so these tests hold the files to the host's contract
(see DESIGN.md, "The Functions host contract") and run scripts/package.sh with a dummy binary.
"""

import json
import os
import platform
import re
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO / "functions"
PACKAGE_SCRIPT = REPO / "scripts" / "package.sh"

EXPECTED_FUNCTIONS = {"Api", "SyncWorker", "IncrementalSync", "WebhookDispatch"}

# Which settings the example must carry (every name src/config.rs reads and every name in
# infra/app-settings.json) is derived from the source by tests/infra/test_config_contract.py;
# these tests hold the example to the bindings and the docs table to the example.

# Fragments that only appear in real credentials; the example must carry none.
SECRET_MARKERS = ["AccountKey=", "SharedAccessKey=", "SharedAccessSignature", "InstrumentationKey=",
                  "ClientSecret", "password", "whsec_", "-----BEGIN"]

PERCENT_SETTING = re.compile(r"%([^%\s]+)%")


def load_json(path: Path):
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def host_json():
    return load_json(REPO / "host.json")


def local_settings_values():
    return load_json(REPO / "local.settings.json.example")["Values"]


def function_folders():
    return sorted(p for p in FUNCTIONS_DIR.iterdir() if p.is_dir())


def bindings_of(name: str):
    return load_json(FUNCTIONS_DIR / name / "function.json")["bindings"]


def all_bindings():
    for folder in function_folders():
        for binding in bindings_of(folder.name):
            yield folder.name, binding


# --- host.json -------------------------------------------------------------------------------

def test_host_json_is_version_2():
    assert host_json()["version"] == "2.0"


def test_host_starts_the_binary_at_the_package_root_with_serve():
    description = host_json()["customHandler"]["description"]
    assert description["defaultExecutablePath"] == "customer360"
    assert description["workingDirectory"] == ""
    assert description["arguments"] == ["serve"]


def test_host_forwards_http_requests_unchanged():
    assert host_json()["customHandler"]["enableForwardingHttpRequest"] is True


def test_public_api_url_is_slash_api():
    # The host serves routePrefix + route; forwarding then hands the binary that same path.
    prefix = host_json()["extensions"]["http"]["routePrefix"]
    (trigger,) = [b for b in bindings_of("Api") if b["type"] == "httpTrigger"]
    public = "/" + "/".join(part.strip("/") for part in (prefix, trigger["route"]) if part.strip("/"))
    assert public == "/api/{*path}"


def test_host_uses_extension_bundle_4():
    bundle = host_json()["extensionBundle"]
    assert bundle == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}


def test_telemetry_sampling_keeps_every_request_and_exception():
    logging = host_json()["logging"]
    sampling = logging["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert set(sampling["excludedTypes"].split(";")) == {"Request", "Exception"}
    assert logging["logLevel"]["default"] == "Information"


def test_service_bus_trigger_settings():
    service_bus = host_json()["extensions"]["serviceBus"]
    assert service_bus["maxConcurrentCalls"] >= 1
    assert service_bus["autoCompleteMessages"] is True
    assert service_bus["maxAutoLockRenewalDuration"] == "00:10:00"
    assert service_bus["prefetchCount"] == 0


def test_function_timeout_is_ten_minutes_and_host_retry_is_off():
    host = host_json()
    assert host["functionTimeout"] == "00:10:00"
    # Service Bus redelivery (maxDeliveryCount, then dead-letter) is the only retry.
    assert "retry" not in host


# --- function folders ------------------------------------------------------------------------

def test_function_folders_are_exactly_the_four_functions():
    assert {p.name for p in function_folders()} == EXPECTED_FUNCTIONS


@pytest.mark.parametrize("name", sorted(EXPECTED_FUNCTIONS))
def test_function_json_parses_and_has_one_trigger(name):
    bindings = bindings_of(name)
    assert isinstance(bindings, list) and bindings
    for binding in bindings:
        assert {"type", "direction", "name"} <= binding.keys(), binding
    triggers = [b for b in bindings if b["type"].endswith("Trigger")]
    assert len(triggers) == 1 and triggers[0]["direction"] == "in"


def test_api_function_can_be_forwarded():
    # Forwarding applies only to exactly one httpTrigger input and one http output.
    bindings = bindings_of("Api")
    assert len(bindings) == 2
    (trigger,) = [b for b in bindings if b["type"] == "httpTrigger"]
    (output,) = [b for b in bindings if b["type"] == "http"]
    assert trigger["direction"] == "in"
    assert trigger["authLevel"] == "anonymous"
    assert trigger["route"] == "api/{*path}"
    assert set(trigger["methods"]) == {"get", "post", "put", "patch", "delete", "options", "head"}
    assert output == {"type": "http", "direction": "out", "name": "res"}


def test_sync_worker_reads_the_sync_queue_through_an_identity_connection():
    (trigger,) = bindings_of("SyncWorker")
    assert trigger["type"] == "serviceBusTrigger"
    assert trigger["direction"] == "in"
    assert trigger["name"] == "message"
    assert trigger["queueName"] == "%SYNC_QUEUE%"
    assert trigger["connection"] == "ServiceBusConnection"
    assert trigger["isSessionsEnabled"] is False


@pytest.mark.parametrize("name, schedule_setting", [
    ("IncrementalSync", "INCREMENTAL_SYNC_SCHEDULE"),
    ("WebhookDispatch", "WEBHOOK_DISPATCH_SCHEDULE"),
])
def test_timer_functions_take_their_schedule_from_app_settings(name, schedule_setting):
    (trigger,) = bindings_of(name)
    assert trigger["type"] == "timerTrigger"
    assert trigger["name"] == "timer"
    assert trigger["schedule"] == f"%{schedule_setting}%"
    assert trigger["runOnStartup"] is False


def test_incremental_sync_timer_is_monitored():
    (trigger,) = bindings_of("IncrementalSync")
    assert trigger["useMonitor"] is True


# --- local.settings.json.example -------------------------------------------------------------

def test_local_settings_example_runs_a_custom_handler_on_azurite():
    settings = load_json(REPO / "local.settings.json.example")
    assert settings["IsEncrypted"] is False
    assert settings["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "custom"
    assert settings["Values"]["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_local_settings_example_values_are_strings_without_secrets():
    for name, value in local_settings_values().items():
        assert isinstance(value, str), name  # the host rejects non-string Values
        for marker in SECRET_MARKERS:
            assert marker.lower() not in value.lower(), (name, marker)


def test_every_percent_setting_a_binding_uses_is_in_the_example():
    values = local_settings_values()
    used = {(fn, m) for fn, b in all_bindings() for v in b.values() if isinstance(v, str)
            for m in PERCENT_SETTING.findall(v)}
    assert used, "expected bindings to use %SETTING% expressions"
    assert sorted((fn, s) for fn, s in used if s not in values) == []


def test_every_binding_connection_is_configured_in_the_example():
    values = local_settings_values()
    connections = {(fn, b["type"], b["connection"]) for fn, b in all_bindings() if "connection" in b}
    assert connections, "expected at least one binding with a connection"
    for fn, binding_type, connection in connections:
        if binding_type.startswith("serviceBus"):
            # Identity-based: the extension looks for <connection>__fullyQualifiedNamespace.
            assert f"{connection}__fullyQualifiedNamespace" in values, (fn, connection)
        else:
            assert connection in values or any(k.startswith(f"{connection}__") for k in values), (fn, connection)


@pytest.mark.parametrize("setting", ["INCREMENTAL_SYNC_SCHEDULE", "WEBHOOK_DISPATCH_SCHEDULE"])
def test_example_schedules_are_six_field_ncrontab(setting):
    assert len(local_settings_values()[setting].split()) == 6


def docs_settings_table_names(docs: str) -> set[str]:
    """First-column names of the table in the "## App settings" section (not the other tables)."""
    section = re.search(r"^## App settings\n(.*?)(?=^## |\Z)", docs, flags=re.MULTILINE | re.DOTALL)
    assert section, "docs/functions.md has no '## App settings' section"
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", section.group(1), flags=re.MULTILINE))


def test_docs_settings_table_covers_every_example_setting():
    docs = (REPO / "docs" / "functions.md").read_text(encoding="utf-8")
    assert sorted(set(local_settings_values()) - docs_settings_table_names(docs)) == []


def test_docs_settings_table_ignores_rows_of_other_tables():
    docs = ("## host.json choices\n| `RUST_LOG` | `x` | y |\n\n"
            "## App settings\n| Setting | Example | Meaning |\n|---|---|---|\n| `STORE` | `sqlite` | z |\n\n## Tests\n")
    assert docs_settings_table_names(docs) == {"STORE"}


# --- scripts/package.sh ----------------------------------------------------------------------

def run_package(*args, env=None):
    return subprocess.run(["bash", str(PACKAGE_SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    work = tmp_path_factory.mktemp("package")
    dummy = work / "dummy-binary"
    dummy.write_bytes(b"#!/bin/sh\necho customer360\n")
    dummy.chmod(0o644)  # the script must set the executable bit itself
    out = work / "out"
    result = run_package("--binary", str(dummy), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def expected_package_files():
    return {"host.json", "customer360"} | {f"{name}/function.json" for name in EXPECTED_FUNCTIONS}


def test_package_zip_holds_exactly_host_json_functions_and_binary(package):
    with zipfile.ZipFile(package / "customer360-functions.zip") as zf:
        assert sorted(zf.namelist()) == sorted(expected_package_files())


def test_package_zip_keeps_the_binary_executable(package):
    with zipfile.ZipFile(package / "customer360-functions.zip") as zf:
        info = zf.getinfo("customer360")
        mode = info.external_attr >> 16
        assert info.create_system == 3  # Unix, so the mode bits mean what they say
        assert stat.S_ISREG(mode) and mode & 0o111 == 0o111
        assert zf.read("customer360") == b"#!/bin/sh\necho customer360\n"


def test_package_zip_carries_the_repository_host_and_function_files(package):
    with zipfile.ZipFile(package / "customer360-functions.zip") as zf:
        assert zf.read("host.json") == (REPO / "host.json").read_bytes()
        for name in EXPECTED_FUNCTIONS:
            assert zf.read(f"{name}/function.json") == (FUNCTIONS_DIR / name / "function.json").read_bytes()


def test_package_folder_matches_the_zip(package):
    app = package / "functions-app"
    files = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    assert files == expected_package_files()
    assert (app / "customer360").stat().st_mode & 0o111 == 0o111


def test_package_fails_without_an_existing_binary(tmp_path):
    result = run_package("--binary", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "binary not found" in result.stderr
    assert not (tmp_path / "out" / "customer360-functions.zip").exists()


def test_package_rejects_unknown_arguments():
    result = run_package("--no-such-option")
    assert result.returncode != 0
    assert "Usage:" in result.stderr


def test_package_help_prints_usage():
    result = run_package("--help")
    assert result.returncode == 0
    assert "--binary PATH" in result.stdout and "--out DIR" in result.stdout


# Without --binary the script builds. A real release build takes minutes, so these tests put
# stand-ins for cargo and rustup first on PATH: they record the call and drop a binary where
# cargo would.
FAKE_CARGO = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$1" in
  metadata) printf '{"target_directory": "%s"}\\n' "$FAKE_TARGET_DIR" ;;
  build)
    dir="$FAKE_TARGET_DIR/release"
    prev=""
    for arg in "$@"; do
      [ "$prev" = "--target" ] && dir="$FAKE_TARGET_DIR/$arg/release"
      prev="$arg"
    done
    mkdir -p "$dir" && printf 'built' > "$dir/customer360" ;;
esac
"""

FAKE_RUSTUP = """#!/bin/sh
printf '%s\\n' $FAKE_INSTALLED_TARGETS
"""


def fake_toolchain(tmp_path, installed_targets):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("cargo", FAKE_CARGO), ("rustup", FAKE_RUSTUP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ,
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_LOG=str(tmp_path / "cargo.log"),
               FAKE_TARGET_DIR=str(tmp_path / "target"),
               FAKE_INSTALLED_TARGETS=" ".join(installed_targets))
    return env


def cargo_builds(tmp_path):
    return [line for line in (tmp_path / "cargo.log").read_text().splitlines() if line.startswith("build")]


def test_package_builds_for_the_linux_target_when_it_is_installed(tmp_path):
    env = fake_toolchain(tmp_path, ["wasm32-unknown-unknown", "x86_64-unknown-linux-gnu"])
    result = run_package("--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    (build,) = cargo_builds(tmp_path)
    assert "--release" in build and "--locked" in build and "--target x86_64-unknown-linux-gnu" in build
    with zipfile.ZipFile(tmp_path / "out" / "customer360-functions.zip") as zf:
        assert zf.read("customer360") == b"built"


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.machine() == "x86_64"),
                    reason="the plain build is only allowed on x86_64 Linux")
def test_package_builds_for_the_host_when_the_host_is_x86_64_linux(tmp_path):
    env = fake_toolchain(tmp_path, ["aarch64-unknown-linux-gnu"])
    result = run_package("--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    (build,) = cargo_builds(tmp_path)
    assert "--release" in build and "--locked" in build and "--target" not in build
    with zipfile.ZipFile(tmp_path / "out" / "customer360-functions.zip") as zf:
        assert zf.read("customer360") == b"built"
