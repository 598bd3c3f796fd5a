"""Checks of the Azure deployment (infra/) that run without Azure and without a
Bicep compiler: every .bicep file parses (tree-sitter-bicep), symbols and module
interfaces line up, and the resources carry what DESIGN.md and issue 9 require.

Each check is a function `check_*(infra_dir) -> list[str]` (problems found).
The tests assert the real infra/ has none, and test_mutation_is_caught breaks
a copy of infra/ in one place per case and asserts the matching check notices,
so no check can pass vacuously.

Run:  bash scripts/setup-python.sh && .venv/bin/python -m pytest tests/infra -q
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

import bicep_ast as ba

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DEPLOY_SH = REPO / "scripts" / "deploy.sh"
SETUP_PY_SH = REPO / "scripts" / "setup-python.sh"

SECRET_NAMES = ["jwt-signing-key", "webhook-hmac-key", "servicebus-send-key", "connector-api-key"]
GENERATED_SECRETS = ["jwt-signing-key", "webhook-hmac-key"]

ROLE_STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_SERVICEBUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
ROLE_KEYVAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a65-a7bf1fbcf1a8"
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"

# role -> resource types it may be scoped to
APP_ROLES = {
    ROLE_STORAGE_BLOB_DATA_OWNER: ("Storage Blob Data Owner", {"Microsoft.Storage/storageAccounts"}),
    ROLE_SERVICEBUS_DATA_RECEIVER: ("Azure Service Bus Data Receiver",
                                    {"Microsoft.ServiceBus/namespaces", "Microsoft.ServiceBus/namespaces/queues"}),
    ROLE_KEYVAULT_SECRETS_USER: ("Key Vault Secrets User", {"Microsoft.KeyVault/vaults"}),
    ROLE_MONITORING_METRICS_PUBLISHER: ("Monitoring Metrics Publisher", {"Microsoft.Insights/components"}),
}

# Settings whose value comes from a module output: (module file, resource type the
# output reads, text the output expression must contain).
SETTING_SOURCES = {
    "COSMOS_ENDPOINT": ("cosmos.bicep", "Microsoft.DocumentDB/databaseAccounts", ".properties.documentEndpoint"),
    "COSMOS_DATABASE": ("cosmos.bicep", "Microsoft.DocumentDB/databaseAccounts/sqlDatabases", ".name"),
    "KEYVAULT_URL": ("keyvault.bicep", "Microsoft.KeyVault/vaults", ".properties.vaultUri"),
    "AZURE_CLIENT_ID": ("identity.bicep", "Microsoft.ManagedIdentity/userAssignedIdentities", ".properties.clientId"),
    "SERVICEBUS_NAMESPACE": ("servicebus.bicep", "Microsoft.ServiceBus/namespaces", ".properties.serviceBusEndpoint"),
    "SYNC_QUEUE": ("servicebus.bicep", "Microsoft.ServiceBus/namespaces/queues", ".name"),
    "SERVICEBUS_SEND_POLICY": ("servicebus.bicep", "Microsoft.ServiceBus/namespaces/queues/authorizationRules", ".name"),
    "ServiceBusConnection__fullyQualifiedNamespace": ("servicebus.bicep", "Microsoft.ServiceBus/namespaces", ".properties.serviceBusEndpoint"),
    "ServiceBusConnection__clientId": ("identity.bicep", "Microsoft.ManagedIdentity/userAssignedIdentities", ".properties.clientId"),
    "AzureWebJobsStorage__accountName": ("storage.bicep", "Microsoft.Storage/storageAccounts", ".name"),
    "AzureWebJobsStorage__clientId": ("identity.bicep", "Microsoft.ManagedIdentity/userAssignedIdentities", ".properties.clientId"),
    "APPLICATIONINSIGHTS_CONNECTION_STRING": ("monitoring.bicep", "Microsoft.Insights/components", ".properties.ConnectionString"),
    "SYNC_MAX_DELIVERY_COUNT": ("servicebus.bicep", "Microsoft.ServiceBus/namespaces/queues", ".properties.maxDeliveryCount"),
}
SETTING_LITERALS = {
    "STORE": "cosmos",
    "ServiceBusConnection__credential": "managedidentity",
    "AzureWebJobsStorage__credential": "managedidentity",
    "AZURE_CREDENTIAL": "managedidentity",
}
# Settings set from a main.bicep parameter, with the parameter's required default.
SETTING_PARAM_DEFAULTS = {
    "TOKEN_TTL_SECONDS": 3600,
    "RATE_LIMIT_PER_MINUTE": 600,
    "TOKEN_RATE_LIMIT_PER_MINUTE": 60,
    "CLIENT_CACHE_SECONDS": 30,
    "WEBHOOK_TIMEOUT_MS": 10000,
    "CONNECTOR_TIMEOUT_MS": 30000,
    "CONNECTOR_MAX_ATTEMPTS": 5,
    "CONNECTOR_RETRY_BASE_MS": 500,
    "CORS_ALLOWED_ORIGINS": "",
    "SECRETS_REFRESH_SECONDS": 300,
    "INCREMENTAL_SYNC_SCHEDULE": "0 */15 * * * *",
    "WEBHOOK_DISPATCH_SCHEDULE": "*/15 * * * * *",
    "CONNECTOR_BASE_URL": "",
    "RUST_LOG": "info",
    "JWT_AUDIENCE": ...,  # any default
    "JWT_ISSUER": ...,
}
# Settings whose value check_app_setting_values does not check, with the reason.
SETTING_VALUES_UNCHECKED = {
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "built from the identity client id in a string template",
}
FORBIDDEN_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "AzureWebJobsStorage",
                      "WEBSITE_RUN_FROM_PACKAGE", "ServiceBusConnection", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING"}


# ---------------------------------------------------------------- helpers


def bicep_files(infra: Path) -> list[Path]:
    return sorted(infra.rglob("*.bicep"))


def load(path: Path) -> ba.BicepFile:
    return ba.load(str(path.resolve()))


def main_file(infra: Path) -> ba.BicepFile:
    return load(infra / "main.bicep")


def module_file(infra: Path, name: str) -> tuple[ba.BicepFile, list[ba.Module]]:
    """The module file `name` and main.bicep's calls of it."""
    main = main_file(infra)
    calls = [c for c in main.modules if Path(c.path).name == name]
    return load(infra / "modules" / name), calls


def all_resources(infra: Path, rtype: str) -> list[tuple[ba.BicepFile, ba.Resource]]:
    out = []
    for p in bicep_files(infra):
        f = load(p)
        out += [(f, r) for r in f.resources_of(rtype)]
    return out


def lit(f: ba.BicepFile, node) -> object:
    v = f.literal_value(node)
    return v if ba.is_literal(v) else f"<expr {f.expand(node)!r}>"


def module_param_binding(infra: Path, mod_file: str, param: str) -> tuple[ba.BicepFile, object]:
    """Node main.bicep passes to `param` of modules/<mod_file> (first call)."""
    main = main_file(infra)
    _, calls = module_file(infra, mod_file)
    if not calls:
        return main, None
    return main, ba.get(calls[0].body, "params", param)


def value_or_binding(infra: Path, mod_file: str, f: ba.BicepFile, node):
    """Literal value of a node in a module, following a bare module param to what main passes
    (or its default)."""
    node = f.resolve(node)
    if node is not None and node.type == "identifier" and ba.node_text(node) in f.params:
        name = ba.node_text(node)
        main, passed = module_param_binding(infra, mod_file, name)
        if passed is not None:
            return main.literal_value(passed)
        return ba.literal(f.params[name].default)
    return ba.literal(node)


def identity_principal_problems(infra: Path, f: ba.BicepFile, principal_node, where: str) -> list[str]:
    """principalId must be the app identity's principalId (a module param bound in
    main.bicep to the identity module's principalId output)."""
    node = f.resolve(principal_node)
    if node is None:
        return [f"{where}: no principalId"]
    text = ba.node_text(node)
    if node.type == "identifier" and text in f.params:
        main = main_file(infra)
        calls = [m for m in main.modules if (infra / m.path).resolve() == f.path.resolve()]
        if not calls:
            return [f"{where}: module {f.name} is not used by main.bicep"]
        problems = []
        for call in calls:
            passed = ba.get(call.body, "params", text)
            m = re.fullmatch(r"(\w+)\.outputs\.principalId", main.expand(passed).strip("()") if passed is not None else "")
            ident = main.module(m.group(1)) if m else None
            if not ident or Path(ident.path).name != "identity.bicep":
                problems.append(f"{where}: main.bicep passes {text}="
                                f"{main.expand(passed) if passed is not None else 'nothing'}, not the identity module's principalId")
        return problems
    if re.fullmatch(r"\w+\.properties\.principalId", text):
        sym = text.split(".")[0]
        r = f.resource(sym)
        if r and r.type == "Microsoft.ManagedIdentity/userAssignedIdentities":
            return []
    return [f"{where}: principalId {text!r} is not the app identity"]


def app_settings(infra: Path) -> tuple[ba.BicepFile, dict[str, object]]:
    """(file, {name: value node}) of the Function App's siteConfig.appSettings, following
    a module param back to what main.bicep passes."""
    fa, calls = module_file(infra, "functionapp.bicep")
    sites = fa.resources_of("Microsoft.Web/sites")
    if len(sites) != 1:
        raise AssertionError(f"functionapp.bicep must declare one Microsoft.Web/sites, found {len(sites)}")
    node = fa.resolve(ba.get(sites[0].body, "properties", "siteConfig", "appSettings"))
    owner = fa
    if node is not None and node.type == "identifier" and ba.node_text(node) in fa.params:
        if not calls:
            raise AssertionError("main.bicep does not call modules/functionapp.bicep")
        owner = main_file(infra)
        node = owner.resolve(ba.get(calls[0].body, "params", ba.node_text(node)))
    if node is None or node.type != "array":
        raise AssertionError("the Function App's appSettings is not an array literal (after following vars/params)")
    settings: dict[str, object] = {}
    for item in ba.named(node):
        item = owner.resolve(item)
        if item is None or item.type != "object":
            raise AssertionError(f"{owner.line(node)}: app setting entry is not an object")
        name = ba.literal(ba.get(item, "name"))
        if not isinstance(name, str):
            raise AssertionError(f"{owner.line(item)}: app setting name is not a literal string")
        if name in settings:
            raise AssertionError(f"{owner.line(item)}: app setting {name} set twice")
        settings[name] = ba.get(item, "value")
    return owner, settings


def contract(infra: Path) -> list[dict]:
    return json.loads((infra / "app-settings.json").read_text(encoding="utf-8"))


def cosmos_config(infra: Path) -> dict:
    return json.loads((infra / "cosmos-containers.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------- checks


def check_syntax(infra: Path) -> list[str]:
    files = bicep_files(infra)
    if not files:
        return [f"no .bicep files under {infra}"]
    return [p for f in files for p in ba.syntax_problems(f)]


def check_symbols(infra: Path) -> list[str]:
    problems = []
    for p in bicep_files(infra):
        f = load(p)
        problems += ba.undefined_symbols(f) + ba.module_interface_problems(f)
    return problems


def check_modules_used(infra: Path) -> list[str]:
    main = main_file(infra)
    used = {(infra / m.path).resolve() for m in main.modules}
    return [f"{p}: module not used by main.bicep" for p in bicep_files(infra / "modules") if p.resolve() not in used]


def check_main_parameters(infra: Path) -> list[str]:
    main = main_file(infra)
    problems = []
    for name in ("namePrefix", "location", "environment"):
        if name not in main.params:
            problems.append(f"main.bicep: parameter {name} missing")
    for name, p in main.params.items():
        if "secure" in p.decorators and p.default is not None:
            text = ba.node_text(p.default)
            if ba.is_literal(ba.literal(p.default)) and ba.literal(p.default) != "":
                problems.append(f"main.bicep: secure param {name} has a literal non-empty default")
    return problems


def check_app_settings_contract(infra: Path) -> list[str]:
    problems = []
    entries = contract(infra)
    names = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e.get("name"):
            problems.append(f"app-settings.json[{i}]: needs a non-empty string name")
            continue
        if not isinstance(e.get("description"), str) or not e["description"].strip():
            problems.append(f"app-settings.json: {e['name']} needs a description")
        names.append(e["name"])
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        problems.append(f"app-settings.json: duplicate names {sorted(dupes)}")
    try:
        owner, settings = app_settings(infra)
    except AssertionError as exc:
        return problems + [str(exc)]
    for n in names:
        if n not in settings:
            problems.append(f"{n} (infra/app-settings.json) is not set in the Function App's app settings")
    for n in settings:
        if n not in names:
            problems.append(f"app setting {n} is set in Bicep but missing from infra/app-settings.json")
    for n in settings:
        if n in FORBIDDEN_SETTINGS:
            problems.append(f"app setting {n} must not be set (Flex sets it / key-based connection)")
    for n, v in settings.items():
        text = owner.expand(v)
        if re.search(r"AccountKey=|SharedAccessKey=|listKeys\(|listConnectionStrings\(|\.getSecret\(", text, re.I):
            problems.append(f"app setting {n} carries a key: {text}")
    return problems


def check_app_setting_values(infra: Path) -> list[str]:
    problems = []
    try:
        main, settings = app_settings(infra)
    except AssertionError as exc:
        return [str(exc)]
    for name, want in SETTING_LITERALS.items():
        got = lit(main, settings.get(name))
        if got != want:
            problems.append(f"{name}: expected literal {want!r}, got {got!r}")
    for name, (mod, rtype, attr) in SETTING_SOURCES.items():
        text = main.expand(settings.get(name))
        refs = re.findall(r"\b(\w+)\.outputs\.(\w+)", text)
        ok = False
        for sym, out in refs:
            m = main.module(sym)
            if m is None or Path(m.path).name != mod:
                continue
            mf = load((main.path.parent / m.path))
            expr = mf.outputs.get(out)
            expr_text = mf.expand(expr)
            syms = {s for s in re.findall(r"\b([A-Za-z_]\w*)\.", expr_text)}
            if attr in expr_text and any((r := mf.resource(s)) is not None and r.type == rtype for s in syms):
                ok = True
        if not ok:
            problems.append(f"{name}: expected a value from {mod} output reading {rtype}{attr}, got {text!r}")
    for name, want in SETTING_PARAM_DEFAULTS.items():
        node = main.resolve(settings.get(name))
        text = ba.node_text(node) if node is not None else ""
        params = [i for i in re.findall(r"(?<![.$'])\b([A-Za-z_]\w*)\b", text) if i in main.params]
        if len(set(params)) != 1:
            problems.append(f"{name}: expected exactly one main.bicep parameter in {text!r}")
            continue
        default = ba.literal(main.params[params[0]].default)
        if want is not ... and default != want:
            problems.append(f"{name}: parameter {params[0]} default is {default!r}, expected {want!r}")
        if want is ... and main.params[params[0]].default is None:
            problems.append(f"{name}: parameter {params[0]} has no default")
    # COSMOS_DATABASE must be the database of cosmos-containers.json.
    cosmos, calls = module_file(infra, "cosmos.bicep")
    dbs = cosmos.resources_of("Microsoft.DocumentDB/databaseAccounts/sqlDatabases")
    if len(dbs) != 1:
        problems.append(f"cosmos.bicep: expected one sqlDatabases resource, found {len(dbs)}")
    else:
        name_text = cosmos.expand(ba.get(dbs[0].body, "name"))
        m = re.fullmatch(r"\(?(\w+)\)?\.database", name_text)
        if not m or m.group(1) not in cosmos.params or not calls:
            problems.append(f"cosmos.bicep: database name {name_text!r} is not <config param>.database")
        elif not re.search(r"loadJsonContent\('(\./)?cosmos-containers\.json'\)",
                           main.expand(ba.get(calls[0].body, "params", m.group(1)))):
            problems.append("main.bicep: the cosmos module's config is not loadJsonContent('cosmos-containers.json')")
    return problems


def check_cosmos(infra: Path) -> list[str]:
    problems = []
    cfg = cosmos_config(infra)
    if cfg.get("database") != "customer360":
        problems.append(f"cosmos-containers.json: database is {cfg.get('database')!r}, expected customer360")
    containers = cfg.get("containers")
    if not isinstance(containers, list) or not containers:
        return problems + ["cosmos-containers.json: containers must be a non-empty list"]
    for c in containers:
        if not isinstance(c.get("name"), str) or not isinstance(c.get("partitionKey"), str) \
                or not c["partitionKey"].startswith("/"):
            problems.append(f"cosmos-containers.json: {c!r} needs name and a partitionKey path starting with /")
        if "defaultTtl" in c and (not isinstance(c["defaultTtl"], int) or c["defaultTtl"] == 0 or c["defaultTtl"] < -1):
            problems.append(f"cosmos-containers.json: {c.get('name')}: defaultTtl must be -1 or > 0")
        if "indexingPolicy" in c and not isinstance(c["indexingPolicy"], dict):
            problems.append(f"cosmos-containers.json: {c.get('name')}: indexingPolicy must be an object")
        if "uniqueKeys" in c and not (isinstance(c["uniqueKeys"], list) and all(
                isinstance(k, dict) and isinstance(k.get("paths"), list) for k in c["uniqueKeys"])):
            problems.append(f"cosmos-containers.json: {c.get('name')}: uniqueKeys must be [{{\"paths\": [...]}}]")

    main = main_file(infra)
    loads = [v for v in main.vars.values() if re.search(r"loadJsonContent\('(\./)?cosmos-containers\.json'\)", ba.node_text(v))]
    if not loads:
        problems.append("main.bicep: cosmos-containers.json is not loaded with loadJsonContent('cosmos-containers.json')")
    cosmos, calls = module_file(infra, "cosmos.bicep")
    if not calls:
        return problems + ["main.bicep does not call modules/cosmos.bicep"]
    res = cosmos.resources_of("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    if len(res) != 1 or res[0].loop is None:
        return problems + ["cosmos.bicep: containers must be one resource looping over the config's containers"]
    r = res[0]
    loop = r.loop
    kids = loop.children
    in_idx = next(i for i, c in enumerate(kids) if c.type == "in")
    iterated = cosmos.expand(kids[in_idx + 1])
    var_nodes = [c for c in kids[:in_idx] if c.type in ("identifier", "loop_variable")] + \
        [cc for c in kids[:in_idx] if c.type == "for_loop_parameters" for cc in c.children if cc.type == "loop_variable"]
    item = ba.node_text(var_nodes[0]) if var_nodes else "?"
    m = re.fullmatch(r"\(?(\w+)\)?\.containers", iterated)
    if not m or m.group(1) not in cosmos.params:
        problems.append(f"cosmos.bicep: containers loop over {iterated!r}, expected <config param>.containers")
    else:
        passed = main.expand(ba.get(calls[0].body, "params", m.group(1)))
        if not re.search(r"loadJsonContent\('(\./)?cosmos-containers\.json'\)", passed):
            problems.append(f"main.bicep: cosmos module param {m.group(1)} is {passed!r}, not the loaded cosmos-containers.json")
    body_text = cosmos.expand(r.body)
    if cosmos.expand(ba.get(r.body, "name")) != f"{item}.name":
        problems.append(f"cosmos.bicep: container name must be {item}.name")
    if not re.search(rf"partitionKey\s*:\s*\{{[^}}]*paths\s*:\s*\[\s*{item}\.partitionKey\s*\]", body_text):
        problems.append(f"cosmos.bicep: container partitionKey.paths must be [{item}.partitionKey]")
    for key, target in (("defaultTtl", "defaultTtl"), ("indexingPolicy", "indexingPolicy"), ("uniqueKeys", "uniqueKeyPolicy")):
        if not re.search(rf"{item}\.\??{key}\b", body_text) or target not in body_text:
            problems.append(f"cosmos.bicep: optional {key} of cosmos-containers.json is not passed through as {target}")
    if r.condition is not None:
        problems.append("cosmos.bicep: containers must not be conditional")

    accounts = cosmos.resources_of("Microsoft.DocumentDB/databaseAccounts")
    if len(accounts) != 1:
        return problems + [f"cosmos.bicep: expected one databaseAccounts, found {len(accounts)}"]
    acc = accounts[0].body
    if lit(cosmos, ba.get(acc, "properties", "disableLocalAuth")) is not True:
        problems.append("cosmos.bicep: disableLocalAuth must be true")
    if lit(cosmos, ba.get(acc, "properties", "backupPolicy")) != {
            "type": "Continuous", "continuousModeProperties": {"tier": "Continuous7Days"}}:
        problems.append("cosmos.bicep: backupPolicy must be Continuous / Continuous7Days")
    caps = cosmos.expand(ba.get(acc, "properties", "capabilities"))
    if "EnableServerless" not in caps or "?" not in caps:
        problems.append("cosmos.bicep: capabilities must hold EnableServerless depending on the capacity parameter")
    mode = cosmos.params.get("capacityMode")
    if mode is None or ba.literal(mode.default) not in ("Serverless", "Autoscale") \
            or "'Autoscale'" not in ba.node_text(cosmos.root):
        problems.append("cosmos.bicep: capacityMode parameter (Serverless|Autoscale) missing")
    if "autoscaleSettings" not in cosmos.expand(cosmos.root):
        problems.append("cosmos.bicep: no autoscaleSettings for the Autoscale mode")
    return problems


def check_cosmos_role(infra: Path) -> list[str]:
    cosmos, _ = module_file(infra, "cosmos.bicep")
    problems = []
    found = False
    for r in cosmos.resources_of("Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"):
        if r.condition is not None:
            continue
        props = ba.get(r.body, "properties")
        if COSMOS_DATA_CONTRIBUTOR not in ba.guids_in(cosmos, ba.get(props, "roleDefinitionId")):
            continue
        found = True
        problems += identity_principal_problems(infra, cosmos, ba.get(props, "principalId"), cosmos.line(r.node))
        if ba.get(props, "scope") is None:
            problems.append(f"{cosmos.line(r.node)}: sqlRoleAssignment needs a scope")
    if not found:
        problems.append("cosmos.bicep: no unconditional sqlRoleAssignment of Built-in Data Contributor "
                        f"({COSMOS_DATA_CONTRIBUTOR}) for the app identity")
    return problems


def check_service_bus(infra: Path) -> list[str]:
    sb, calls = module_file(infra, "servicebus.bicep")
    main = main_file(infra)
    problems = []
    ns = sb.resources_of("Microsoft.ServiceBus/namespaces")
    if len(ns) != 1:
        return [f"servicebus.bicep: expected one namespace, found {len(ns)}"]
    if lit(sb, ba.get(ns[0].body, "sku", "name")) != "Standard":
        problems.append("servicebus.bicep: namespace sku must be Standard (duplicate detection)")
    queues = sb.resources_of("Microsoft.ServiceBus/namespaces/queues")
    if len(queues) != 1:
        return problems + [f"servicebus.bicep: expected one queue, found {len(queues)}"]
    q = queues[0]
    qname = value_or_binding(infra, "servicebus.bicep", sb, ba.get(q.body, "name"))
    if qname != "sync-jobs":
        problems.append(f"servicebus.bicep: queue name defaults to {qname!r}, expected 'sync-jobs'")
    else:
        # must come from a parameter (named by parameter)
        name_node = sb.resolve(ba.get(q.body, "name"))
        if name_node is None or name_node.type != "identifier":
            problems.append("servicebus.bicep: the queue name must be a parameter")
    props = ba.get(q.body, "properties")
    want = {"lockDuration": "PT5M", "requiresDuplicateDetection": True,
            "duplicateDetectionHistoryTimeWindow": "PT1H", "deadLetteringOnMessageExpiration": True,
            "maxDeliveryCount": 10}
    for key, value in want.items():
        got = value_or_binding(infra, "servicebus.bicep", sb, ba.get(props, key))
        if got != value:
            problems.append(f"servicebus.bicep: queue {key} is {got!r}, expected {value!r}")
    rules = sb.resources_of("Microsoft.ServiceBus/namespaces/queues/authorizationRules")
    send = [r for r in rules if value_or_binding(infra, "servicebus.bicep", sb, ba.get(r.body, "name")) == "sync-send"]
    if len(send) != 1:
        problems.append("servicebus.bicep: queue authorization rule 'sync-send' missing")
    else:
        rights = lit(sb, ba.get(send[0].body, "properties", "rights"))
        if rights != ["Send"]:
            problems.append(f"servicebus.bicep: sync-send rights are {rights!r}, expected ['Send'] only")
        parent = ba.node_text(ba.get(send[0].body, "parent")) if ba.get(send[0].body, "parent") is not None else ""
        if parent != q.symbol:
            problems.append("servicebus.bicep: sync-send must be a rule of the queue (parent: queue)")
    if sb.resources_of("Microsoft.ServiceBus/namespaces/AuthorizationRules") or \
            sb.resources_of("Microsoft.ServiceBus/namespaces/authorizationRules"):
        problems.append("servicebus.bicep: no namespace-wide SAS rule (the send rule is queue-scoped)")
    return problems


def check_key_vault(infra: Path) -> list[str]:
    kv, _ = module_file(infra, "keyvault.bicep")
    problems = []
    vaults = kv.resources_of("Microsoft.KeyVault/vaults")
    if len(vaults) != 1:
        return [f"keyvault.bicep: expected one vault, found {len(vaults)}"]
    props = ba.get(vaults[0].body, "properties")
    for key in ("enableRbacAuthorization", "enableSoftDelete", "enablePurgeProtection"):
        if lit(kv, ba.get(props, key)) is not True:
            problems.append(f"keyvault.bicep: {key} must be true")
    if ba.get(props, "accessPolicies") is not None and lit(kv, ba.get(props, "accessPolicies")) != []:
        problems.append("keyvault.bicep: no access policies with RBAC authorization")
    secrets: dict[str, ba.Resource] = {}
    for f, r in all_resources(infra, "Microsoft.KeyVault/vaults/secrets"):
        name = lit(f, ba.get(r.body, "name"))
        if isinstance(name, str):
            secrets[name] = r
    for name in SECRET_NAMES:
        if name not in secrets:
            problems.append(f"Key Vault secret {name} is not declared")
    for name in GENERATED_SECRETS:
        r = secrets.get(name)
        if r is None:
            continue
        if "onlyIfNotExists" not in r.decorators:
            problems.append(f"secret {name} must be @onlyIfNotExists() (never overwrite a rotated key)")
        if r.condition is not None:
            problems.append(f"secret {name} must not be conditional")
        value = ba.get(r.body, "properties", "value")
        vtext = kv.expand(value)
        params = [p for p in re.findall(r"\b\w+\b", vtext) if p in kv.params]
        if len(params) != 1 or "secure" not in kv.params[params[0]].decorators:
            problems.append(f"secret {name}: value must be a @secure() parameter, got {vtext!r}")
        else:
            main, passed = module_param_binding(infra, "keyvault.bicep", params[0])
            ptext = main.expand(passed) if passed is not None else ""
            mparams = [p for p in re.findall(r"\b\w+\b", ptext) if p in main.params]
            if len(mparams) != 1 or "secure" not in main.params[mparams[0]].decorators \
                    or "newGuid()" not in ba.node_text(main.params[mparams[0]].default or kv.root):
                problems.append(f"secret {name}: main.bicep must pass a @secure() param defaulting to a newGuid()-based value")
    sbk = secrets.get("servicebus-send-key")
    if sbk is not None:
        text = kv.expand(ba.get(sbk.body, "properties", "value"))
        m = re.search(r"\b(\w+)\.listKeys\(\)\.primaryKey", text)
        target = kv.resource(m.group(1)) if m else None
        if target is None or target.type != "Microsoft.ServiceBus/namespaces/queues/authorizationRules":
            problems.append(f"servicebus-send-key must be <queue send rule>.listKeys().primaryKey, got {text!r}")
        else:
            rule_name = value_or_binding(infra, "keyvault.bicep", kv, ba.get(target.body, "name"))
            if rule_name != "sync-send":
                main, passed = module_param_binding(infra, "keyvault.bicep",
                                                    ba.node_text(kv.resolve(ba.get(target.body, "name"))))
                if not re.search(r"\w+\.outputs\.sendRuleName", main.expand(passed) if passed is not None else ""):
                    problems.append(f"servicebus-send-key reads rule {rule_name!r}, not sync-send")
    con = secrets.get("connector-api-key")
    if con is not None and con.condition is None:
        problems.append("connector-api-key must be conditional on the optional secure parameter")
    return problems


def check_role_assignments(infra: Path) -> list[str]:
    problems = []
    seen: set[str] = set()
    for f, r in all_resources(infra, "Microsoft.Authorization/roleAssignments"):
        props = ba.get(r.body, "properties")
        guids = ba.guids_in(f, ba.get(props, "roleDefinitionId")) & set(APP_ROLES)
        if not guids or r.condition is not None:
            continue
        role = guids.pop()
        label, scopes = APP_ROLES[role]
        where = f.line(r.node)
        pp = identity_principal_problems(infra, f, ba.get(props, "principalId"), where)
        scope_node = f.resolve(ba.get(r.body, "scope"))
        scope_res = f.resource(ba.node_text(scope_node)) if scope_node is not None else None
        if scope_res is None or scope_res.type not in scopes:
            pp.append(f"{where}: {label} must be scoped to {sorted(scopes)}, "
                      f"got {ba.node_text(scope_node) if scope_node is not None else 'no scope'}")
        if lit(f, ba.get(props, "principalType")) != "ServicePrincipal":
            pp.append(f"{where}: {label} needs principalType 'ServicePrincipal' (new identities replicate slowly)")
        if not pp:
            seen.add(role)
        problems += pp
    for role, (label, _) in APP_ROLES.items():
        if role not in seen:
            problems.append(f"no role assignment of {label} ({role}) for the app identity")
    return problems


def check_function_app(infra: Path) -> list[str]:
    fa, calls = module_file(infra, "functionapp.bicep")
    problems = []
    if not calls:
        return ["main.bicep does not call modules/functionapp.bicep"]
    plans = fa.resources_of("Microsoft.Web/serverfarms")
    if len(plans) != 1 or lit(fa, ba.get(plans[0].body, "sku")) != {"name": "FC1", "tier": "FlexConsumption"}:
        problems.append("functionapp.bicep: the plan must be Flex Consumption (sku FC1 / FlexConsumption)")
    elif lit(fa, ba.get(plans[0].body, "properties", "reserved")) is not True:
        problems.append("functionapp.bicep: the plan must be Linux (reserved: true)")
    sites = fa.resources_of("Microsoft.Web/sites")
    if len(sites) != 1:
        return problems + [f"functionapp.bicep: expected one site, found {len(sites)}"]
    s = sites[0].body
    if lit(fa, ba.get(s, "kind")) != "functionapp,linux":
        problems.append("functionapp.bicep: kind must be 'functionapp,linux'")
    if lit(fa, ba.get(s, "properties", "httpsOnly")) is not True:
        problems.append("functionapp.bicep: httpsOnly must be true")
    sc = ba.get(s, "properties", "siteConfig")
    if lit(fa, ba.get(sc, "minTlsVersion")) != "1.2":
        problems.append("functionapp.bicep: siteConfig.minTlsVersion must be '1.2'")
    if lit(fa, ba.get(sc, "ftpsState")) != "Disabled":
        problems.append("functionapp.bicep: siteConfig.ftpsState must be 'Disabled'")
    if lit(fa, ba.get(s, "identity", "type")) != "UserAssigned":
        problems.append("functionapp.bicep: identity.type must be 'UserAssigned'")
    cfg = ba.get(s, "properties", "functionAppConfig")
    if lit(fa, ba.get(cfg, "runtime")) != {"name": "custom", "version": "1.0"}:
        problems.append("functionapp.bicep: functionAppConfig.runtime must be {name: 'custom', version: '1.0'}")
    storage = ba.get(cfg, "deployment", "storage")
    if lit(fa, ba.get(storage, "type")) != "blobContainer":
        problems.append("functionapp.bicep: deployment.storage.type must be 'blobContainer'")
    if lit(fa, ba.get(storage, "authentication", "type")) != "UserAssignedIdentity" \
            or ba.get(storage, "authentication", "userAssignedIdentityResourceId") is None:
        problems.append("functionapp.bicep: deployment storage must authenticate with the user-assigned identity")
    url_text = ""
    url = fa.resolve(ba.get(storage, "value"))
    if url is not None and url.type == "identifier" and ba.node_text(url) in fa.params:
        main = main_file(infra)
        url_text = main.expand(ba.get(calls[0].body, "params", ba.node_text(url)))
    if "outputs.deploymentContainerUrl" not in url_text:
        problems.append("functionapp.bicep: deployment container URL must come from the storage module")
    ftp = [r for r in fa.resources_of("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
           if lit(fa, ba.get(r.body, "name")) == "ftp"]
    if not ftp or lit(fa, ba.get(ftp[0].body, "properties", "allow")) is not False:
        problems.append("functionapp.bicep: FTP basic publishing credentials must be disabled")
    return problems


def check_storage(infra: Path) -> list[str]:
    st, _ = module_file(infra, "storage.bicep")
    problems = []
    accounts = st.resources_of("Microsoft.Storage/storageAccounts")
    if len(accounts) != 1:
        return [f"storage.bicep: expected one storage account, found {len(accounts)}"]
    props = ba.get(accounts[0].body, "properties")
    if lit(st, ba.get(props, "minimumTlsVersion")) != "TLS1_2":
        problems.append("storage.bicep: minimumTlsVersion must be TLS1_2")
    if lit(st, ba.get(props, "allowSharedKeyAccess")) is not False:
        problems.append("storage.bicep: allowSharedKeyAccess must be false (identity-based host storage)")
    if lit(st, ba.get(props, "allowBlobPublicAccess")) is not False:
        problems.append("storage.bicep: allowBlobPublicAccess must be false")
    if not st.resources_of("Microsoft.Storage/storageAccounts/blobServices/containers"):
        problems.append("storage.bicep: the Flex deployment blob container is missing")
    if "deploymentContainerUrl" not in st.outputs:
        problems.append("storage.bicep: output deploymentContainerUrl missing")
    return problems


def check_alerts(infra: Path) -> list[str]:
    al, calls = module_file(infra, "alerts.bicep")
    problems = []
    if not calls:
        return ["main.bicep does not call modules/alerts.bicep"]
    logs = al.resources_of("Microsoft.Insights/scheduledQueryRules")
    metrics = al.resources_of("Microsoft.Insights/metricAlerts")

    def has_log(pred) -> bool:
        for r in logs:
            crit = ba.get(r.body, "properties", "criteria", "allOf")
            for c in ba.named(crit) if crit is not None else []:
                q = al.expand(ba.get(c, "query"))
                thr = value_or_binding(infra, "alerts.bicep", al, ba.get(c, "threshold"))
                if pred(q, thr, c):
                    return True
        return False

    if not has_log(lambda q, thr, c: re.search(r"percentile\(\s*duration\s*,\s*95\s*\)", q) and thr == 300
                   and lit(al, ba.get(c, "operator")) == "GreaterThan"):
        problems.append("alerts.bicep: no log alert with percentile(duration, 95) > 300 ms")
    if not has_log(lambda q, thr, c: "requests" in q and re.search(r"resultCode\)?\s*>=\s*500|resultCode.*5\d\d", q)):
        problems.append("alerts.bicep: no log alert on the 5xx rate of requests")

    def has_metric(metric: str, dim: str, values: list | None, ns: str) -> bool:
        for r in metrics:
            for c in ba.named(ba.get(r.body, "properties", "criteria", "allOf") or r.body):
                if c.type != "object":
                    continue
                if lit(al, ba.get(c, "metricName")) != metric or lit(al, ba.get(c, "metricNamespace")) != ns:
                    continue
                for d in ba.named(ba.get(c, "dimensions") or c):
                    if d.type == "object" and lit(al, ba.get(d, "name")) == dim:
                        if values is None or lit(al, ba.get(d, "values")) == values:
                            return True
        return False

    if not has_metric("DeadletteredMessages", "EntityName", None, "Microsoft.ServiceBus/namespaces"):
        problems.append("alerts.bicep: no DeadletteredMessages metric alert with dimension EntityName")
    if not has_metric("TotalRequests", "StatusCode", ["429"], "Microsoft.DocumentDB/databaseAccounts"):
        problems.append("alerts.bicep: no Cosmos TotalRequests metric alert filtered on StatusCode 429")
    ag = al.params.get("actionGroupId")
    if ag is None or ba.literal(ag.default) != "":
        problems.append("alerts.bicep: actionGroupId must be an optional parameter (default '')")
    for r in logs + metrics:
        if r.condition is not None:
            problems.append(f"{al.line(r.node)}: alerts are created even without an action group")
    return problems


def check_outputs(infra: Path) -> list[str]:
    main = main_file(infra)
    problems = []
    api = main.expand(main.outputs.get("apiBaseUrl"))
    if not re.fullmatch(r"'https://\$\{\w+\.outputs\.defaultHostName\}/api'", api):
        problems.append(f"main.bicep: output apiBaseUrl must be 'https://${{<app>.outputs.defaultHostName}}/api', got {api!r}")
    for name in ("functionAppName", "storageAccountName", "cosmosAccountName", "serviceBusNamespaceName",
                 "keyVaultName", "appInsightsName"):
        if name not in main.outputs:
            problems.append(f"main.bicep: output {name} missing")
    for p in bicep_files(infra):
        f = load(p)
        for name, node in f.outputs.items():
            text = f.expand(node)
            secure = [x for x in re.findall(r"\b\w+\b", text) if x in f.params and "secure" in f.params[x].decorators]
            if "listKeys(" in text or secure:
                problems.append(f"{f.name}: output {name} leaks a secret")
    return problems


def check_no_key_connections(infra: Path) -> list[str]:
    """The one key Bicep reads is the Service Bus send rule's; it goes to Key Vault."""
    problems = []
    for p in bicep_files(infra):
        f = load(p)
        text = ba.node_text(f.root)
        for m in re.finditer(r"(\w+)\.(list\w*)\(", text):
            r = f.resource(m.group(1))
            if not (m.group(2) == "listKeys" and r is not None
                    and r.type == "Microsoft.ServiceBus/namespaces/queues/authorizationRules"):
                problems.append(f"{p}: {m.group(0)}) reads a key; only the queue send rule's key may be read")
        for bad in ("AccountKey=", "SharedAccessKey=", "connectionStrings"):
            if bad in text:
                problems.append(f"{p}: contains {bad}")
    return problems


CHECKS = {
    "syntax": check_syntax,
    "symbols": check_symbols,
    "modules_used": check_modules_used,
    "main_parameters": check_main_parameters,
    "app_settings_contract": check_app_settings_contract,
    "app_setting_values": check_app_setting_values,
    "cosmos": check_cosmos,
    "cosmos_role": check_cosmos_role,
    "service_bus": check_service_bus,
    "key_vault": check_key_vault,
    "role_assignments": check_role_assignments,
    "function_app": check_function_app,
    "storage": check_storage,
    "alerts": check_alerts,
    "outputs": check_outputs,
    "no_key_connections": check_no_key_connections,
}


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("path", bicep_files(INFRA), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses(path: Path):
    problems = ba.syntax_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", [n for n in CHECKS if n != "syntax"])
def test_check(name: str):
    problems = CHECKS[name](INFRA)
    assert not problems, "\n".join(problems)


def test_contract_lists_every_required_setting():
    required = {
        "STORE", "COSMOS_ENDPOINT", "COSMOS_DATABASE", "KEYVAULT_URL", "AZURE_CLIENT_ID",
        "SERVICEBUS_NAMESPACE", "SYNC_QUEUE", "SERVICEBUS_SEND_POLICY",
        "ServiceBusConnection__fullyQualifiedNamespace", "ServiceBusConnection__credential",
        "ServiceBusConnection__clientId", "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__credential", "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING", "JWT_ISSUER", "JWT_AUDIENCE", "TOKEN_TTL_SECONDS",
        "RATE_LIMIT_PER_MINUTE", "CORS_ALLOWED_ORIGINS", "SECRETS_REFRESH_SECONDS",
        "INCREMENTAL_SYNC_SCHEDULE", "WEBHOOK_DISPATCH_SCHEDULE", "CONNECTOR_BASE_URL",
        "SYNC_MAX_DELIVERY_COUNT", "RUST_LOG",
    }
    names = {e["name"] for e in contract(INFRA)}
    assert required <= names, f"missing from infra/app-settings.json: {sorted(required - names)}"
    assert not names & FORBIDDEN_SETTINGS


def test_every_contract_setting_has_a_checked_value_source():
    # A new setting must say where its value comes from (module output, literal or parameter),
    # or check_app_setting_values would let any value through.
    known = set(SETTING_SOURCES) | set(SETTING_LITERALS) | set(SETTING_PARAM_DEFAULTS) | set(SETTING_VALUES_UNCHECKED)
    names = {e["name"] for e in contract(INFRA)}
    assert not names - known, f"no value source declared in test_bicep.py for {sorted(names - known)}"
    assert not known - names, f"value sources declared for settings not in the contract: {sorted(known - names)}"


def test_every_check_is_exercised_by_a_mutation():
    covered = {m[3] for m in MUTATIONS}
    assert covered == set(CHECKS), f"checks without a mutation case: {sorted(set(CHECKS) - covered)}"


# (id, file under infra/, old text, check that must then fail; new text)
MUTATIONS = [
    ("syntax-missing-brace", "modules/keyvault.bicep", "    enablePurgeProtection: true\n", "syntax",
     "    enablePurgeProtection: [true\n"),
    ("typo-symbol", "modules/servicebus.bicep", "parent: queue\n", "symbols", "parent: queeu\n"),
    ("unknown-function", "main.bicep", "loadJsonContent('cosmos-containers.json')", "symbols",
     "loadJsonContents('cosmos-containers.json')"),
    ("module-param-unknown", "main.bicep", "    queueName: syncQueueName\n", "symbols", "    queue: syncQueueName\n"),
    ("module-output-unknown", "main.bicep", "value: cosmos.outputs.endpoint\n", "symbols",
     "value: cosmos.outputs.endpointUrl\n"),
    ("orphan-module", "main.bicep", "module alerts 'modules/alerts.bicep'", "modules_used",
     "module alerts 'modules/alerts2.bicep'"),
    ("no-prefix-param", "main.bicep", "param namePrefix string = 'c360'", "main_parameters",
     "var namePrefix = 'c360'"),
    ("setting-removed", "main.bicep", "    name: 'RUST_LOG'\n", "app_settings_contract", "    name: 'RUST_LOGS'\n"),
    ("setting-worker-runtime", "main.bicep", "    name: 'RUST_LOG'\n    value: rustLog\n  }\n",
     "app_settings_contract",
     "    name: 'RUST_LOG'\n    value: rustLog\n  }\n  {\n    name: 'FUNCTIONS_WORKER_RUNTIME'\n    value: 'custom'\n  }\n"),
    ("contract-extra-name", "app-settings.json", '{ "name": "RUST_LOG"', "app_settings_contract",
     '{ "name": "NOT_SET_ANYWHERE", "description": "x" },\n  { "name": "RUST_LOG"'),
    ("store-value", "main.bicep", "value: 'cosmos'", "app_setting_values", "value: 'sqlite'"),
    ("client-id-wrong", "main.bicep", "var identityClientId = identity.outputs.clientId", "app_setting_values",
     "var identityClientId = identity.outputs.principalId"),
    ("ttl-default", "main.bicep", "param tokenTtlSeconds int = 3600", "app_setting_values",
     "param tokenTtlSeconds int = 7200"),
    ("credential-developer", "main.bicep", "    name: 'AZURE_CREDENTIAL'\n    value: 'managedidentity'\n",
     "app_setting_values", "    name: 'AZURE_CREDENTIAL'\n    value: 'developer'\n"),
    ("connector-attempts-literal", "main.bicep", "value: string(connectorMaxAttempts)", "app_setting_values",
     "value: '5'"),
    ("delivery-count-literal", "main.bicep", "value: string(serviceBus.outputs.maxDeliveryCount)",
     "app_setting_values", "value: '10'"),
    ("database-literal", "modules/cosmos.bicep", "  name: config.database\n", "app_setting_values",
     "  name: 'customer360'\n"),
    ("containers-hardcoded", "modules/cosmos.bicep", "[for c in config.containers:", "cosmos",
     "[for c in ['customers']:"),
    ("partition-key-fixed", "modules/cosmos.bicep", "          c.partitionKey\n", "cosmos", "          '/id'\n"),
    ("ttl-dropped", "modules/cosmos.bicep", "contains(c, 'defaultTtl') ? {\n      defaultTtl: c.defaultTtl\n    } : {}",
     "cosmos", "{}"),
    ("cosmos-local-auth", "modules/cosmos.bicep", "disableLocalAuth: true", "cosmos", "disableLocalAuth: false"),
    ("cosmos-backup", "modules/cosmos.bicep", "tier: 'Continuous7Days'", "cosmos", "tier: 'Continuous30Days'"),
    ("cosmos-role-id", "modules/cosmos.bicep", "var dataContributorRoleId = '00000000-0000-0000-0000-000000000002'",
     "cosmos_role", "var dataContributorRoleId = '00000000-0000-0000-0000-000000000001'"),
    ("queue-lock", "modules/servicebus.bicep", "lockDuration: 'PT5M'", "service_bus", "lockDuration: 'PT1M'"),
    ("queue-dupdetect", "modules/servicebus.bicep", "requiresDuplicateDetection: true", "service_bus",
     "requiresDuplicateDetection: false"),
    ("queue-delivery", "main.bicep", "param syncMaxDeliveryCount int = 10", "service_bus",
     "param syncMaxDeliveryCount int = 5"),
    ("send-rule-listen", "modules/servicebus.bicep", "      'Send'\n", "service_bus", "      'Send'\n      'Listen'\n"),
    ("send-rule-name", "main.bicep", "var serviceBusSendRuleName = 'sync-send'", "service_bus",
     "var serviceBusSendRuleName = 'send'"),
    ("sb-basic", "modules/servicebus.bicep", "    name: 'Standard'\n", "service_bus", "    name: 'Basic'\n"),
    ("kv-purge", "modules/keyvault.bicep", "enablePurgeProtection: true", "key_vault", "enablePurgeProtection: false"),
    ("kv-rbac", "modules/keyvault.bicep", "enableRbacAuthorization: true", "key_vault",
     "enableRbacAuthorization: false"),
    ("secret-overwrite", "modules/keyvault.bicep", "@onlyIfNotExists()\nresource jwtSecret", "key_vault",
     "resource jwtSecret"),
    ("secret-missing", "modules/keyvault.bicep", "name: 'webhook-hmac-key'", "key_vault", "name: 'webhook-key'"),
    ("secret-fixed-default", "main.bicep", "param jwtSigningKey string = base64('${newGuid()}${newGuid()}')",
     "key_vault", "param jwtSigningKey string = base64('fixed')"),
    ("sb-key-wrong", "modules/keyvault.bicep", "sbSendRule.listKeys().primaryKey", "key_vault", "'nope'"),
    ("role-kv-wrong-id", "modules/keyvault.bicep", "var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'",
     "role_assignments", "var keyVaultSecretsUserRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'"),
    ("role-receiver-wrong-principal", "main.bicep",
     "    sendRuleName: serviceBusSendRuleName\n    principalId: identity.outputs.principalId\n", "role_assignments",
     "    sendRuleName: serviceBusSendRuleName\n    principalId: identity.outputs.clientId\n"),
    ("role-blob-scope", "modules/storage.bicep", "  scope: storage\n", "role_assignments", "  scope: deploymentContainer\n"),
    ("https-off", "modules/functionapp.bicep", "httpsOnly: true", "function_app", "httpsOnly: false"),
    ("tls-1-0", "modules/functionapp.bicep", "      minTlsVersion: '1.2'", "function_app", "      minTlsVersion: '1.0'"),
    ("ftps-on", "modules/functionapp.bicep", "ftpsState: 'Disabled'", "function_app", "ftpsState: 'FtpsOnly'"),
    ("runtime-node", "modules/functionapp.bicep", "name: 'custom'", "function_app", "name: 'node'"),
    ("plan-ep1", "modules/functionapp.bicep", "    name: 'FC1'\n    tier: 'FlexConsumption'\n", "function_app",
     "    name: 'EP1'\n    tier: 'ElasticPremium'\n"),
    ("ftp-allowed", "modules/functionapp.bicep", "    allow: false\n", "function_app", "    allow: true\n"),
    ("shared-key", "modules/storage.bicep", "allowSharedKeyAccess: false", "storage", "allowSharedKeyAccess: true"),
    ("p95-threshold", "main.bicep", "param p95ThresholdMs int = 300", "alerts", "param p95ThresholdMs int = 500"),
    ("p95-percentile", "modules/alerts.bicep", "p95 = percentile(duration, 95)", "alerts", "p95 = percentile(duration, 50)"),
    ("deadletter-dimension", "modules/alerts.bicep", "              name: 'EntityName'", "alerts",
     "              name: 'Entity'"),
    ("cosmos-429", "modules/alerts.bicep", "                '429'\n", "alerts", "                '503'\n"),
    ("alerts-need-action-group", "modules/alerts.bicep",
     "resource p95Alert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {",
     "alerts", "resource p95Alert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = if (!empty(actionGroupId)) {"),
    ("api-url", "main.bicep", "/api'\n", "outputs", "'\n"),
    ("output-leaks", "modules/keyvault.bicep", "output uri string = vault.properties.vaultUri",
     "outputs", "output uri string = jwtSigningKey"),
    ("storage-key", "modules/storage.bicep", "output id string = storage.id", "no_key_connections",
     "output id string = storage.listKeys().keys[0].value"),
]


@pytest.mark.parametrize("case", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_is_caught(case, tmp_path: Path):
    case_id, rel, old, check, new = case
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    target = copy / rel
    text = target.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"mutation {case_id}: {old!r} must occur exactly once in {rel}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    assert not CHECKS[check](INFRA), f"the real infra/ must pass check {check}"
    problems = CHECKS[check](copy)
    assert problems, f"check {check} did not notice mutation {case_id}"


# --------------------------------------------------------------- scripts


def test_deploy_script_is_valid_bash():
    assert DEPLOY_SH.is_file(), "scripts/deploy.sh missing"
    res = subprocess.run(["bash", "-n", str(DEPLOY_SH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = DEPLOY_SH.read_text(encoding="utf-8")
    assert re.search(r"^set -euo pipefail$", text, re.M)
    assert "main.bicep" in text and "customer360-functions.zip" in text


def test_setup_python_script_is_valid_bash():
    res = subprocess.run(["bash", "-n", str(SETUP_PY_SH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^set -euo pipefail$", SETUP_PY_SH.read_text(encoding="utf-8"), re.M)


def test_deploy_script_usage():
    res = subprocess.run(["bash", str(DEPLOY_SH), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "Usage" in res.stdout
    res = subprocess.run(["bash", str(DEPLOY_SH)], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Usage" in res.stderr, "without -g it must fail with usage"
    res = subprocess.run(["bash", str(DEPLOY_SH), "-g", "rg", "--bogus"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Usage" in res.stderr


FAKE_AZ = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Records each call; answers the few queries deploy.sh makes.
    printf '%s\\n' "$*" >> "$AZ_LOG"
    case "$*" in
      "account show"*) echo '{"id": "sub"}' ;;
      "group exists"*) echo false ;;
      "deployment group create"*)
        printf '%s' '{"functionAppName":{"type":"String","value":"func-c360-dev-x"},'
        printf '%s' '"apiBaseUrl":{"type":"String","value":"https://func-c360-dev-x.azurewebsites.net/api"},'
        printf '%s\\n' '"keyVaultName":{"type":"String","value":"kvc360devx"}}' ;;
      *) ;;
    esac
    """)


def test_deploy_script_flow_with_fake_az(tmp_path: Path):
    """deploy.sh against a stand-in `az`: resource group, Bicep deployment, zip deploy, in that order."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    az = bindir / "az"
    az.write_text(FAKE_AZ)
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    pkg = tmp_path / "customer360-functions.zip"
    pkg.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    log = tmp_path / "az.log"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", AZ_LOG=str(log))
    res = subprocess.run(["bash", str(DEPLOY_SH), "-g", "rg-c360-dev", "-l", "westeurope", "-e", "dev",
                          "--package", str(pkg)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = log.read_text().splitlines()
    create = [i for i, c in enumerate(calls) if c.startswith("group create")]
    deploy = [i for i, c in enumerate(calls) if c.startswith("deployment group create")]
    zipdep = [i for i, c in enumerate(calls) if c.startswith("functionapp deployment source config-zip")
              or c.startswith("functionapp deploy ")]
    assert create and deploy and zipdep, calls
    assert create[0] < deploy[0] < zipdep[0]
    d = calls[deploy[0]]
    assert "--resource-group rg-c360-dev" in d and "infra/main.bicep" in d
    assert "environment=dev" in d and "location=westeurope" in d
    z = calls[zipdep[0]]
    assert "func-c360-dev-x" in z and str(pkg) in z
    assert "https://func-c360-dev-x.azurewebsites.net/api" in res.stdout


def test_deploy_script_refuses_missing_package(tmp_path: Path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    az = bindir / "az"
    az.write_text(FAKE_AZ)
    az.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", AZ_LOG=str(tmp_path / "az.log"))
    res = subprocess.run(["bash", str(DEPLOY_SH), "-g", "rg", "--skip-infra", "--app", "func-x",
                          "--package", str(tmp_path / "nope.zip")], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and "package.sh" in res.stderr


# ------------------------------------------------------------------ docs


README_TOPICS = {
    "prerequisites": r"(?i)prerequisite",
    "deploy script": r"scripts/deploy\.sh",
    "package script": r"scripts/package\.sh",
    "rotation": r"(?i)rotat",
    "refresh window": r"SECRETS_REFRESH_SECONDS",
    "token lifetime": r"TOKEN_TTL_SECONDS",
    "point-in-time restore": r"az cosmosdb restore",
    "multi-region": r"(?i)multi-region|secondary region|cosmosSecondaryLocation",
    "why Flex": r"(?i)why flex consumption",
    "EP1 fallback": r"EP1",
    "SAS exception": r"(?i)SAS",
}


@pytest.mark.parametrize("topic", README_TOPICS)
def test_readme_covers(topic: str):
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    assert re.search(README_TOPICS[topic], text), f"infra/README.md does not cover {topic}"


@pytest.mark.parametrize("path", sorted((INFRA / "env").glob("*.parameters.json")), ids=lambda p: p.name)
def test_parameter_file_names_declared_params(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    main = main_file(INFRA)
    unknown = set(data.get("parameters", {})) - set(main.params)
    assert not unknown, f"{path.name}: parameters not declared in main.bicep: {sorted(unknown)}"
    assert not {"jwtSigningKey", "webhookHmacKey", "connectorApiKey"} & set(data["parameters"]), \
        "secrets do not belong in a committed parameters file"
