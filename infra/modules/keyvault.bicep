// Key Vault (RBAC, soft delete, purge protection) and the app's secrets.
// jwt-signing-key and webhook-hmac-key are generated at the first deployment
// only (@onlyIfNotExists): later deployments never overwrite a rotated key.
// servicebus-send-key is the primary key of the queue's send-only SAS rule,
// copied by every deployment (listKeys()).

@description('Key Vault name (3-24 letters, digits, hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object = {}

@description('Principal id of the app identity (gets Key Vault Secrets User).')
param principalId string

@description('Optional principal (user or group object id) that gets Key Vault Secrets Officer, for key rotation. Empty = none.')
param operatorPrincipalId string = ''

@description('Initial JWT signing key (used only when the secret does not exist yet).')
@secure()
param jwtSigningKey string

@description('Initial webhook HMAC key (used only when the secret does not exist yet).')
@secure()
param webhookHmacKey string

@description('Optional API key of the external CRM connector. Empty = the secret is not written.')
@secure()
param connectorApiKey string = ''

@description('Service Bus namespace holding the queue and its send-only rule.')
param serviceBusNamespaceName string

@description('Queue whose send rule key is stored.')
param serviceBusQueueName string

@description('Send-only SAS rule on the queue.')
param serviceBusSendRuleName string

@description('Soft-delete retention in days.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
  }
}

@onlyIfNotExists()
resource jwtSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'jwt-signing-key'
  properties: {
    value: jwtSigningKey
    contentType: 'base64'
    attributes: {
      enabled: true
    }
  }
}

@onlyIfNotExists()
resource webhookSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-hmac-key'
  properties: {
    value: webhookHmacKey
    contentType: 'base64'
    attributes: {
      enabled: true
    }
  }
}

resource sbNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource sbQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: sbNamespace
  name: serviceBusQueueName
}

resource sbSendRule 'Microsoft.ServiceBus/namespaces/queues/authorizationRules@2024-01-01' existing = {
  parent: sbQueue
  name: serviceBusSendRuleName
}

resource serviceBusSendKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'servicebus-send-key'
  properties: {
    value: sbSendRule.listKeys().primaryKey
    contentType: 'Service Bus SAS key of queue rule ${serviceBusSendRuleName}'
    attributes: {
      enabled: true
    }
  }
}

resource connectorSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(connectorApiKey)) {
  parent: vault
  name: 'connector-api-key'
  properties: {
    value: connectorApiKey
    attributes: {
      enabled: true
    }
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource secretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, keyVaultSecretsOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
    principalId: operatorPrincipalId
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
output secretNames array = [
  jwtSecret.name
  webhookSecret.name
  serviceBusSendKey.name
  'connector-api-key'
]
