// Function App on Linux, Flex Consumption, running the Rust binary as a
// custom handler (functionAppConfig.runtime custom 1.0). The package is
// deployed from a blob container, read with the user-assigned identity.
// Flex sets FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION itself:
// they must not be in appSettings.

@description('Function App name (also the default host name label).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region (must offer Flex Consumption).')
param location string

@description('Tags for every resource.')
param tags object = {}

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Blob container URL holding the deployment package (https://<account>.blob.core.windows.net/<container>).')
param deploymentContainerUrl string

@description('App settings, as [ { name, value } ]; main.bicep builds them from infra/app-settings.json\'s contract.')
param appSettings array

@description('Upper bound of instances Flex may scale out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Always-ready (pre-warmed, billed) instances for the HTTP trigger group; 0 = scale to zero.')
@minValue(0)
param alwaysReadyInstances int = 0

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: union({
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }, alwaysReadyInstances > 0 ? {
        // Warm instances for the HTTP group: no cold start on the API path.
        alwaysReady: [
          {
            name: 'http'
            instanceCount: alwaysReadyInstances
          }
        ]
      } : {})
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // CORS is answered by the binary (CORS_ALLOWED_ORIGINS); platform CORS
      // stays unset so it does not strip or duplicate the headers.
      appSettings: appSettings
    }
  }
}

// FTP off: no basic-auth publishing over FTP at all.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output planName string = plan.name
