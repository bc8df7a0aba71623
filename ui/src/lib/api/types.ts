// Names for the host's shapes. Every type here comes from schema.d.ts, generated from
// docs/openapi.json by `npm run gen:api` (tests/api-types.test.ts fails when it is stale).
import type { components } from './schema';

type S = components['schemas'];

export type Agent = S['Agent'];
export type AgentNetwork = S['AgentNetwork'];
export type ArchivedAgent = S['ArchivedAgent'];
export type AgentWithToken = S['AgentWithToken'];
export type AuthStatus = S['AuthStatus'];
export type Channel = S['Channel'];
export type Message = S['Message'];
export type MessageState = S['MessageState'];
export type DeployRequest = S['DeployRequest'];
export type DeployAccepted = S['DeployAccepted'];
export type DeployStatus = S['DeployStatus'];
export type DeployStep = S['DeployStep'];
export type Device = S['Device'];
export type DiskStatus = S['DiskStatus'];
export type ErrorBody = S['ErrorBody'];
export type HostEvent = S['HostEvent'];
export type HostInfo = S['HostInfo'];
export type Health = S['Health'];
export type LlmKey = S['LlmKey'];
export type LlmStatus = S['LlmStatus'];
export type LoginResponse = S['LoginResponse'];
export type Manifest = S['Manifest'];
export type ModelInfo = S['ModelInfo'];
export type NewProvider = S['NewProvider'];
export type Notification = S['Notification'];
export type PairingTokenResponse = S['PairingTokenResponse'];
export type Provider = S['Provider'];
export type ProviderModel = S['ProviderModel'];
export type ProviderPatch = S['ProviderPatch'];
export type ProviderTestResult = S['ProviderTestResult'];
export type ProviderType = S['ProviderType'];
export type TraceEvent = S['TraceEvent'];
export type TraceKind = S['TraceKind'];
export type TraceList = S['TraceList'];
export type TraceDayTotal = S['TraceDayTotal'];
export type TraceTotals = S['TraceTotals'];
export type Usage = S['Usage'];
export type Budget = S['Budget'];
export type User = S['User'];
export type ClientEvent = S['ClientEvent'];
export type ServerEvent = S['ServerEvent'];
export type TurnFailure = S['TurnFailure'];
