// Customer360 on Azure: the whole system in one resource group.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p namePrefix=c360 environment=dev
//
// See infra/README.md. The app settings below are the contract in
// infra/app-settings.json (tests/infra checks both stay equal).

targetScope = 'resourceGroup'

@description('Short name prefix for every resource: starts with a letter; lowercase letters, digits, hyphens.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'c360'

@description('Environment name, part of every resource name.')
@allowed([
  'dev'
  'test'
  'staging'
  'prod'
])
param environment string = 'dev'

@description('Azure region for every resource (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Extra tags for every resource.')
param tags object = {}

@description('Cosmos DB capacity: Serverless (single region) or Autoscale (shared database RU/s, multi-region capable).')
@allowed([
  'Serverless'
  'Autoscale'
])
param cosmosCapacityMode string = 'Serverless'

@description('Autoscale maximum RU/s of the database (Autoscale only).')
@minValue(1000)
param cosmosAutoscaleMaxThroughput int = 1000

@description('Optional second Cosmos DB region for disaster recovery (Autoscale only). Empty = single region.')
param cosmosSecondaryLocation string = ''

@description('Cosmos DB account name override, e.g. an account restored with az cosmosdb restore. Empty = the generated name.')
param cosmosAccountName string = ''

@description('Service Bus queue of sync jobs.')
param syncQueueName string = 'sync-jobs'

@description('Deliveries of a sync job before Service Bus dead-letters it; also SYNC_MAX_DELIVERY_COUNT.')
@minValue(1)
@maxValue(100)
param syncMaxDeliveryCount int = 10

@description('JWT issuer (iss). Empty = https://<function app default host>.')
param jwtIssuer string = ''

@description('JWT audience (aud).')
param jwtAudience string = 'customer360-api'

@description('Lifetime of issued access tokens, seconds.')
param tokenTtlSeconds int = 3600

@description('Requests per minute per client/IP.')
param rateLimitPerMinute int = 600

@description('Requests per minute per client/IP to POST /api/auth/token (a tighter limit against credential guessing).')
@minValue(1)
param tokenRateLimitPerMinute int = 60

@description('Comma-separated CORS origins the API allows. Empty = no cross-origin access.')
param corsAllowedOrigins string = ''

@description('How often the app re-reads Key Vault secrets, seconds (rotation takes effect within this time).')
param secretsRefreshSeconds int = 300

@description('How long token validation trusts a cached API client state, seconds (bounds how long a revocation takes to reach every instance).')
@minValue(0)
param clientCacheSeconds int = 30

@description('NCRONTAB (UTC, six fields) of the incremental sync timer.')
param incrementalSyncSchedule string = '0 */15 * * * *'

@description('NCRONTAB (UTC, six fields) of the webhook dispatch timer.')
param webhookDispatchSchedule string = '*/15 * * * * *'

@description('Base URL of the external CRM connector. Empty = no connector.')
param connectorBaseUrl string = ''

@description('How long one connector request (a page) may take before it is retried, ms.')
@minValue(1)
param connectorTimeoutMs int = 30000

@description('Tries per connector page before a sync job fails.')
@minValue(1)
@maxValue(20)
param connectorMaxAttempts int = 5

@description('First connector retry delay, ms; each next retry waits twice as long (with jitter).')
@minValue(0)
param connectorRetryBaseMs int = 500

@description('How long one webhook delivery attempt may take, ms.')
@minValue(100)
@maxValue(10000)
param webhookTimeoutMs int = 10000

@description('API key of the external CRM connector, stored as Key Vault secret connector-api-key. Empty = not written.')
@secure()
param connectorApiKey string = ''

@description('Initial JWT signing key, used only when Key Vault has no jwt-signing-key yet (default: generated).')
@secure()
param jwtSigningKey string = base64('${newGuid()}${newGuid()}')

@description('Initial webhook HMAC key, used only when Key Vault has no webhook-hmac-key yet (default: generated).')
@secure()
param webhookHmacKey string = base64('${newGuid()}${newGuid()}')

@description('RUST_LOG filter of the binary.')
param rustLog string = 'info'

@description('Optional action group resource id the alerts notify. Empty = alerts without notifications.')
param actionGroupId string = ''

@description('Alert when p95 API request duration exceeds this, ms.')
param p95ThresholdMs int = 300

@description('Optional object id of an operator (user or group): gets Key Vault Secrets Officer (rotation) and Cosmos DB Data Contributor. Empty = none.')
param operatorPrincipalId string = ''

@description('Flex Consumption: maximum instances.')
param functionMaximumInstanceCount int = 100

@description('Flex Consumption: always-ready HTTP instances (no cold starts on the API; billed while idle). 0 = scale to zero.')
@minValue(0)
param functionAlwaysReadyInstances int = 0

@description('Flex Consumption: memory per instance, MB.')
@allowed([
  512
  2048
  4096
])
param functionInstanceMemoryMB int = 2048

@description('Application Insights accepts only Entra ID authenticated telemetry when true.')
param appInsightsDisableLocalAuth bool = false

// The Cosmos layout shared with the Rust adapter: database + containers.
var cosmosConfig = loadJsonContent('cosmos-containers.json')

var token = uniqueString(subscription().id, resourceGroup().id, namePrefix, environment)
var baseName = toLower('${namePrefix}-${environment}')
var compactName = replace(baseName, '-', '')
var names = {
  identity: 'id-${baseName}'
  logAnalytics: 'log-${baseName}-${token}'
  appInsights: 'appi-${baseName}-${token}'
  storage: take('st${compactName}${token}', 24)
  deploymentContainer: 'app-package'
  cosmos: empty(cosmosAccountName) ? 'cosmos-${baseName}-${token}' : cosmosAccountName
  serviceBus: 'sb-${baseName}-${token}'
  keyVault: take('kv${compactName}${token}', 24)
  plan: 'plan-${baseName}-${token}'
  functionApp: 'func-${baseName}-${token}'
  alerts: baseName
}
var allTags = union({
  application: 'customer360'
  environment: environment
}, tags)

// Send-only SAS rule name; the app reads it as SERVICEBUS_SEND_POLICY.
var serviceBusSendRuleName = 'sync-send'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
    location: location
    tags: allTags
    principalId: identity.outputs.principalId
    disableLocalAuth: appInsightsDisableLocalAuth
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: names.storage
    location: location
    tags: allTags
    deploymentContainerName: names.deploymentContainer
    principalId: identity.outputs.principalId
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  params: {
    accountName: names.cosmos
    location: location
    tags: allTags
    config: cosmosConfig
    capacityMode: cosmosCapacityMode
    autoscaleMaxThroughput: cosmosAutoscaleMaxThroughput
    secondaryLocation: cosmosSecondaryLocation
    principalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    namespaceName: names.serviceBus
    location: location
    tags: allTags
    queueName: syncQueueName
    maxDeliveryCount: syncMaxDeliveryCount
    sendRuleName: serviceBusSendRuleName
    principalId: identity.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: allTags
    principalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    jwtSigningKey: jwtSigningKey
    webhookHmacKey: webhookHmacKey
    connectorApiKey: connectorApiKey
    serviceBusNamespaceName: serviceBus.outputs.name
    serviceBusQueueName: serviceBus.outputs.queueName
    serviceBusSendRuleName: serviceBus.outputs.sendRuleName
  }
}

var identityClientId = identity.outputs.clientId

// Exactly the names in infra/app-settings.json. Every value comes from a
// deployed resource or a parameter. No key-bearing connection string: the
// host and the binary authenticate with the user-assigned identity; the one
// SAS key (Service Bus send) is read from Key Vault at run time.
var appSettings = [
  {
    name: 'STORE'
    value: 'cosmos'
  }
  {
    name: 'COSMOS_ENDPOINT'
    value: cosmos.outputs.endpoint
  }
  {
    name: 'COSMOS_DATABASE'
    value: cosmos.outputs.databaseName
  }
  {
    name: 'KEYVAULT_URL'
    value: keyVault.outputs.uri
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    // The user-assigned identity of AZURE_CLIENT_ID, never a developer login.
    name: 'AZURE_CREDENTIAL'
    value: 'managedidentity'
  }
  {
    name: 'SERVICEBUS_NAMESPACE'
    value: serviceBus.outputs.fullyQualifiedNamespace
  }
  {
    name: 'SYNC_QUEUE'
    value: serviceBus.outputs.queueName
  }
  {
    name: 'SERVICEBUS_SEND_POLICY'
    value: serviceBus.outputs.sendRuleName
  }
  {
    name: 'ServiceBusConnection__fullyQualifiedNamespace'
    value: serviceBus.outputs.fullyQualifiedNamespace
  }
  {
    name: 'ServiceBusConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'ServiceBusConnection__clientId'
    value: identityClientId
  }
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.outputs.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: monitoring.outputs.connectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  {
    name: 'JWT_ISSUER'
    value: empty(jwtIssuer) ? 'https://${names.functionApp}.azurewebsites.net' : jwtIssuer
  }
  {
    name: 'JWT_AUDIENCE'
    value: jwtAudience
  }
  {
    name: 'TOKEN_TTL_SECONDS'
    value: string(tokenTtlSeconds)
  }
  {
    name: 'RATE_LIMIT_PER_MINUTE'
    value: string(rateLimitPerMinute)
  }
  {
    name: 'TOKEN_RATE_LIMIT_PER_MINUTE'
    value: string(tokenRateLimitPerMinute)
  }
  {
    name: 'CORS_ALLOWED_ORIGINS'
    value: corsAllowedOrigins
  }
  {
    name: 'SECRETS_REFRESH_SECONDS'
    value: string(secretsRefreshSeconds)
  }
  {
    name: 'CLIENT_CACHE_SECONDS'
    value: string(clientCacheSeconds)
  }
  {
    name: 'INCREMENTAL_SYNC_SCHEDULE'
    value: incrementalSyncSchedule
  }
  {
    name: 'WEBHOOK_DISPATCH_SCHEDULE'
    value: webhookDispatchSchedule
  }
  {
    name: 'CONNECTOR_BASE_URL'
    value: connectorBaseUrl
  }
  {
    name: 'WEBHOOK_TIMEOUT_MS'
    value: string(webhookTimeoutMs)
  }
  {
    name: 'CONNECTOR_TIMEOUT_MS'
    value: string(connectorTimeoutMs)
  }
  {
    name: 'CONNECTOR_MAX_ATTEMPTS'
    value: string(connectorMaxAttempts)
  }
  {
    name: 'CONNECTOR_RETRY_BASE_MS'
    value: string(connectorRetryBaseMs)
  }
  {
    // Read back from the deployed queue, so it cannot differ from maxDeliveryCount.
    name: 'SYNC_MAX_DELIVERY_COUNT'
    value: string(serviceBus.outputs.maxDeliveryCount)
  }
  {
    name: 'RUST_LOG'
    value: rustLog
  }
]

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: allTags
    identityId: identity.outputs.id
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appSettings: appSettings
    maximumInstanceCount: functionMaximumInstanceCount
    instanceMemoryMB: functionInstanceMemoryMB
    alwaysReadyInstances: functionAlwaysReadyInstances
  }
  // No dependsOn needed: appSettings reads outputs of every other module, so
  // the app is created only after all of them, role assignments included.
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    namePrefix: names.alerts
    location: location
    tags: allTags
    appInsightsId: monitoring.outputs.appInsightsId
    serviceBusNamespaceId: serviceBus.outputs.id
    queueName: serviceBus.outputs.queueName
    cosmosAccountId: cosmos.outputs.id
    actionGroupId: actionGroupId
    p95ThresholdMs: p95ThresholdMs
  }
}

@description('Base URL of the API.')
output apiBaseUrl string = 'https://${functionApp.outputs.defaultHostName}/api'
output functionAppName string = functionApp.outputs.name
output functionPlanName string = functionApp.outputs.planName
output identityName string = identity.outputs.name
output identityClientId string = identity.outputs.clientId
output storageAccountName string = storage.outputs.name
output deploymentContainerName string = storage.outputs.deploymentContainerName
output cosmosAccountName string = cosmos.outputs.name
output cosmosEndpoint string = cosmos.outputs.endpoint
output cosmosDatabaseName string = cosmos.outputs.databaseName
output serviceBusNamespaceName string = serviceBus.outputs.name
output syncQueueName string = serviceBus.outputs.queueName
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.uri
output appInsightsName string = monitoring.outputs.appInsightsName
output logAnalyticsName string = monitoring.outputs.workspaceName
output alertNames array = alerts.outputs.alertNames
