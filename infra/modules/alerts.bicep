// Alerts: API 5xx rate and p95 duration (log alerts on Application Insights;
// metric alerts cannot compute percentiles), dead-lettered sync jobs and
// Cosmos DB throttling (metric alerts). Without an action group the alerts
// still fire and show in Azure Monitor.

@description('Prefix of the alert names.')
param namePrefix string

@description('Azure region of the log alerts.')
param location string

@description('Tags for every resource.')
param tags object = {}

@description('Application Insights component id.')
param appInsightsId string

@description('Service Bus namespace id.')
param serviceBusNamespaceId string

@description('Queue whose dead letters raise an alert.')
param queueName string

@description('Cosmos DB account id.')
param cosmosAccountId string

@description('Optional action group resource id. Empty = alerts without notifications.')
param actionGroupId string = ''

@description('Alert when p95 HTTP request duration exceeds this many milliseconds.')
param p95ThresholdMs int = 300

@description('Alert when the share of 5xx answers exceeds this percentage.')
param serverErrorRatePercent int = 5

@description('Ignore windows with fewer HTTP requests than this (5xx rate alert).')
param minRequestsForErrorRate int = 20

@description('Alert when Cosmos DB answers more 429s than this within the window.')
param cosmosThrottleThreshold int = 10

var logActionGroups = empty(actionGroupId) ? [] : [
  actionGroupId
]
var metricActions = empty(actionGroupId) ? [] : [
  {
    actionGroupId: actionGroupId
  }
]

// Only forwarded HTTP requests have a url; timer and Service Bus invocations
// are logged as requests too and would skew both numbers.
var serverErrorQuery = '''
requests
| where isnotempty(url)
| summarize total = count(), failed = countif(toint(resultCode) >= 500)
| where total >= {0}
| extend errorRate = 100.0 * failed / total
| project errorRate
'''

var p95Query = '''
requests
| where isnotempty(url)
| summarize p95 = percentile(duration, 95)
| project p95
'''

resource serverErrorAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-api-5xx-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix} API server error rate (5xx)'
    description: 'More than ${serverErrorRatePercent}% of API requests answered 5xx in 5 minutes.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: format(serverErrorQuery, minRequestsForErrorRate)
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'errorRate'
          operator: 'GreaterThan'
          threshold: serverErrorRatePercent
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: logActionGroups
    }
  }
}

resource p95Alert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-api-p95-duration'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix} API p95 duration > ${p95ThresholdMs} ms'
    description: 'p95 of API request duration (percentile(duration, 95)) above ${p95ThresholdMs} ms over 15 minutes.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: p95Query
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'p95'
          operator: 'GreaterThan'
          threshold: p95ThresholdMs
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: logActionGroups
    }
  }
}

resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-sync-deadletters'
  location: 'global'
  tags: tags
  properties: {
    description: 'Sync jobs were dead-lettered on queue ${queueName} (DeliveryCount reached maxDeliveryCount, or expired).'
    severity: 2
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'DeadletteredMessages'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: metricActions
  }
}

resource cosmosThrottleAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-cosmos-429'
  location: 'global'
  tags: tags
  properties: {
    description: 'Cosmos DB throttled (HTTP 429) more than ${cosmosThrottleThreshold} requests in 5 minutes.'
    severity: 2
    enabled: true
    scopes: [
      cosmosAccountId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'Throttled'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.DocumentDB/databaseAccounts'
          metricName: 'TotalRequests'
          dimensions: [
            {
              name: 'StatusCode'
              operator: 'Include'
              values: [
                '429'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: cosmosThrottleThreshold
          timeAggregation: 'Count'
        }
      ]
    }
    autoMitigate: true
    actions: metricActions
  }
}

output alertNames array = [
  serverErrorAlert.name
  p95Alert.name
  deadLetterAlert.name
  cosmosThrottleAlert.name
]
