// User-assigned managed identity for the Function App. It exists before the
// app, so every role assignment can be in place before the host first starts
// (identity-based AzureWebJobsStorage and the Flex deployment container).

@description('Identity name.')
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
