#!/usr/bin/env bash
# Deploys Customer360 to Azure: the infrastructure (infra/main.bicep) into a
# resource group, then the Functions package built by scripts/package.sh.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/deploy.sh -g RESOURCE_GROUP [options] [-- NAME=VALUE ...]

Deploys infra/main.bicep into RESOURCE_GROUP (created when missing), then
zip-deploys dist/customer360-functions.zip (from scripts/package.sh) to the
Function App the deployment created. Needs the Azure CLI (az, logged in with
`az login`; Bicep comes with it) and python3.

  -g, --resource-group NAME  resource group (required)
  -l, --location REGION      region; required when the group does not exist
                             (default: the group's region)
  -p, --prefix PREFIX        namePrefix of every resource (default: c360)
  -e, --environment ENV      dev | test | staging | prod (default: dev);
                             infra/env/ENV.parameters.json is used when present
      --parameters FILE      parameters file instead of infra/env/ENV.parameters.json
      --package ZIP          package to deploy (default: dist/customer360-functions.zip)
      --name NAME            deployment name (default: customer360-ENV)
      --skip-infra           deploy only the package (to --app, or to the app the
                             last deployment named NAME created)
      --app NAME             Function App name (with --skip-infra)
      --skip-code            deploy only the infrastructure
  -h, --help                 show this text
  -- NAME=VALUE ...          more Bicep parameters, e.g. -- corsAllowedOrigins=https://app.example.com

Examples:
  bash scripts/package.sh && bash scripts/deploy.sh -g rg-c360-dev -l westeurope
  bash scripts/deploy.sh -g rg-c360-prod -l westeurope -e prod -- actionGroupId=/subscriptions/.../actionGroups/oncall
USAGE
}

die() { echo "deploy.sh: $*" >&2; exit 1; }
usage_error() { usage >&2; die "$*"; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
template="$repo_root/infra/main.bicep"

resource_group=""
location=""
prefix="c360"
environment="dev"
parameters_file=""
package="$repo_root/dist/customer360-functions.zip"
deployment_name=""
skip_infra=false
skip_code=false
app_name=""
extra_params=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || usage_error "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -g|--resource-group) need_value "$@"; resource_group="$2"; shift 2 ;;
    -l|--location) need_value "$@"; location="$2"; shift 2 ;;
    -p|--prefix) need_value "$@"; prefix="$2"; shift 2 ;;
    -e|--environment) need_value "$@"; environment="$2"; shift 2 ;;
    --parameters) need_value "$@"; parameters_file="$2"; shift 2 ;;
    --package) need_value "$@"; package="$2"; shift 2 ;;
    --name) need_value "$@"; deployment_name="$2"; shift 2 ;;
    --app) need_value "$@"; app_name="$2"; shift 2 ;;
    --skip-infra) skip_infra=true; shift ;;
    --skip-code) skip_code=true; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra_params=("$@"); break ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

[[ -n "$resource_group" ]] || usage_error "missing -g RESOURCE_GROUP"
case "$environment" in
  dev|test|staging|prod) ;;
  *) usage_error "environment must be dev, test, staging or prod, got '$environment'" ;;
esac
$skip_infra && $skip_code && usage_error "--skip-infra and --skip-code together leave nothing to do"
for p in "${extra_params[@]+"${extra_params[@]}"}"; do
  [[ "$p" == *=* ]] || usage_error "extra parameter '$p' is not NAME=VALUE"
done
deployment_name="${deployment_name:-customer360-$environment}"
if [[ -z "$parameters_file" && -f "$repo_root/infra/env/$environment.parameters.json" ]]; then
  parameters_file="$repo_root/infra/env/$environment.parameters.json"
fi
[[ -z "$parameters_file" || -f "$parameters_file" ]] || die "parameters file not found: $parameters_file"

# Check the package before changing anything in Azure.
if ! $skip_code; then
  [[ -f "$package" ]] || die "package not found: $package (build it with: bash scripts/package.sh)"
fi

command -v az >/dev/null || die "the Azure CLI (az) is not installed"
command -v python3 >/dev/null || die "python3 is needed to read the deployment outputs"
az account show --output none >/dev/null 2>&1 || die "not logged in to Azure: run az login (and az account set -s SUBSCRIPTION)"

# output NAME from the outputs JSON on stdin
output() {
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]]["value"])' "$1"
}

outputs=""
if ! $skip_infra; then
  if [[ "$(az group exists --name "$resource_group")" != "true" ]]; then
    [[ -n "$location" ]] || die "resource group $resource_group does not exist: pass -l LOCATION to create it"
    echo "deploy.sh: creating resource group $resource_group in $location" >&2
    az group create --name "$resource_group" --location "$location" --output none
  fi

  params=(namePrefix="$prefix" environment="$environment")
  [[ -n "$location" ]] && params+=(location="$location")
  params+=("${extra_params[@]+"${extra_params[@]}"}")
  file_args=()
  [[ -n "$parameters_file" ]] && file_args=(--parameters "@$parameters_file")

  echo "deploy.sh: deploying $template to $resource_group (deployment $deployment_name)" >&2
  outputs="$(az deployment group create \
    --resource-group "$resource_group" \
    --name "$deployment_name" \
    --template-file "$template" \
    "${file_args[@]+"${file_args[@]}"}" \
    --parameters "${params[@]}" \
    --query properties.outputs \
    --output json)"
  app_name="$(output functionAppName <<<"$outputs")"
fi

if ! $skip_code; then
  if [[ -z "$app_name" ]]; then
    outputs="$(az deployment group show --resource-group "$resource_group" --name "$deployment_name" \
      --query properties.outputs --output json)" \
      || die "no deployment $deployment_name in $resource_group: pass --app NAME"
    app_name="$(output functionAppName <<<"$outputs")"
  fi
  # Flex Consumption: config-zip uploads the package to the app's deployment
  # blob container and restarts the app (no build on the server side).
  echo "deploy.sh: deploying $package to Function App $app_name" >&2
  az functionapp deployment source config-zip \
    --resource-group "$resource_group" \
    --name "$app_name" \
    --src "$package" \
    --output none
fi

if [[ -n "$outputs" ]]; then
  echo "API base URL: $(output apiBaseUrl <<<"$outputs")"
  echo "Key Vault:    $(output keyVaultName <<<"$outputs")"
fi
echo "Function App: $app_name"
