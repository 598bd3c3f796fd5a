// Service Bus namespace (Standard: duplicate detection needs it), the sync job
// queue, a send-only queue SAS rule for azure_messaging_servicebus (REST crate,
// SAS only) and Data Receiver for the app identity (the host's trigger).

@description('Namespace name (6-50 letters, digits, hyphens; starts with a letter).')
@minLength(6)
@maxLength(50)
param namespaceName string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object = {}

@description('Queue of sync jobs.')
param queueName string = 'sync-jobs'

@description('Deliveries before a message is dead-lettered. The app setting SYNC_MAX_DELIVERY_COUNT gets the same value.')
@minValue(1)
@maxValue(2000)
param maxDeliveryCount int = 10

@description('Name of the send-only queue SAS rule (app setting SERVICEBUS_SEND_POLICY).')
param sendRuleName string = 'sync-send'

@description('Principal id of the app identity (gets Azure Service Bus Data Receiver on the queue).')
param principalId string

// Azure Service Bus Data Receiver.
var dataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'

resource busNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    // Local (SAS) auth must stay on: the app sends with the queue-scoped
    // `sync-send` rule because the Rust crate only speaks SAS. The namespace
    // root rule is not used by anything.
    disableLocalAuth: false
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: busNamespace
  name: queueName
  properties: {
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT5M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
    requiresSession: false
    enablePartitioning: false
  }
}

resource sendRule 'Microsoft.ServiceBus/namespaces/queues/authorizationRules@2024-01-01' = {
  parent: queue
  name: sendRuleName
  properties: {
    rights: [
      'Send'
    ]
  }
}

resource dataReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, principalId, dataReceiverRoleId)
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output id string = busNamespace.id
output name string = busNamespace.name
// serviceBusEndpoint is https://<ns>.servicebus.windows.net:443/ (other host
// suffix in sovereign clouds); keep only the host name.
output fullyQualifiedNamespace string = split(replace(busNamespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
output queueName string = queue.name
output sendRuleName string = sendRule.name
output maxDeliveryCount int = queue.properties.maxDeliveryCount
