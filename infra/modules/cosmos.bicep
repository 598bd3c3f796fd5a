// Cosmos DB for NoSQL: account, database and every container listed in
// infra/cosmos-containers.json (loaded by main.bicep and passed in as
// `config`, so that file stays the single source of truth shared with the
// Rust Cosmos adapter). The app identity gets the data-plane role; that role
// cannot create databases or containers, which is why they are declared here.

@description('Cosmos DB account name (3-44 lowercase letters, digits, hyphens).')
@minLength(3)
@maxLength(44)
param accountName string

@description('Primary Azure region.')
param location string

@description('Tags for every resource.')
param tags object = {}

@description('Contents of infra/cosmos-containers.json: { database, containers: [ { name, partitionKey, defaultTtl?, indexingPolicy?, uniqueKeys? } ] }.')
param config object

@description('Serverless (pay per request, single region) or Autoscale (provisioned, shared database throughput, multi-region capable).')
@allowed([
  'Serverless'
  'Autoscale'
])
param capacityMode string = 'Serverless'

@description('Autoscale maximum RU/s shared by the database (Autoscale only).')
@minValue(1000)
param autoscaleMaxThroughput int = 1000

@description('Optional read region for disaster recovery (Autoscale only; serverless accounts are single-region). Empty = single region.')
param secondaryLocation string = ''

@description('Principal id of the app identity (gets Cosmos DB Built-in Data Contributor).')
param principalId string

@description('Optional principal (user or group object id) that also gets Cosmos DB Built-in Data Contributor, e.g. for seeding and restore checks. Empty = none.')
param operatorPrincipalId string = ''

var isServerless = capacityMode == 'Serverless'

// Cosmos DB Built-in Data Contributor (data plane, SQL RBAC).
var dataContributorRoleId = '00000000-0000-0000-0000-000000000002'

var primaryLocations = [
  {
    locationName: location
    failoverPriority: 0
    isZoneRedundant: false
  }
]
var secondaryLocations = (!isServerless && !empty(secondaryLocation)) ? [
  {
    locationName: secondaryLocation
    failoverPriority: 1
    isZoneRedundant: false
  }
] : []
var locations = concat(primaryLocations, secondaryLocations)

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  name: accountName
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    locations: locations
    enableAutomaticFailover: length(locations) > 1
    enableMultipleWriteLocations: false
    capabilities: isServerless ? [
      {
        name: 'EnableServerless'
      }
    ] : []
    // Entra ID only: no account keys for data access.
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
    backupPolicy: {
      type: 'Continuous'
      continuousModeProperties: {
        tier: 'Continuous7Days'
      }
    }
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: account
  name: config.database
  properties: {
    resource: {
      id: config.database
    }
    options: isServerless ? {} : {
      autoscaleSettings: {
        maxThroughput: autoscaleMaxThroughput
      }
    }
  }
}

// One container per entry of cosmos-containers.json. Optional keys are passed
// through only when present: defaultTtl (seconds; -1 = TTL on, no default
// expiry), indexingPolicy (Cosmos indexingPolicy object), uniqueKeys (Cosmos
// uniqueKeys array: [ { "paths": ["/a"] } ]; creation-time only).
resource containers 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = [for c in config.containers: {
  parent: database
  name: c.name
  properties: {
    resource: union({
      id: c.name
      partitionKey: {
        paths: [
          c.partitionKey
        ]
        kind: 'Hash'
        version: 2
      }
    }, contains(c, 'defaultTtl') ? {
      defaultTtl: c.defaultTtl
    } : {}, contains(c, 'indexingPolicy') ? {
      indexingPolicy: c.indexingPolicy
    } : {}, contains(c, 'uniqueKeys') ? {
      uniqueKeyPolicy: {
        uniqueKeys: c.uniqueKeys
      }
    } : {})
    options: {}
  }
}]

resource appDataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = {
  parent: account
  name: guid(account.id, principalId, dataContributorRoleId)
  properties: {
    principalId: principalId
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributorRoleId}'
    scope: account.id
  }
}

resource operatorDataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = if (!empty(operatorPrincipalId)) {
  parent: account
  name: guid(account.id, operatorPrincipalId, dataContributorRoleId)
  properties: {
    principalId: operatorPrincipalId
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributorRoleId}'
    scope: account.id
  }
}

output id string = account.id
output name string = account.name
output endpoint string = account.properties.documentEndpoint
output databaseName string = database.name
output containerNames array = [for (c, i) in config.containers: containers[i].name]
