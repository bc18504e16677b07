//! Every SQLSTATE the proxy puts in an `ErrorResponse` of its own. Codes come from the
//! PostgreSQL errcodes table; nothing outside this module spells one out.

/// `08P01` protocol_violation: malformed or oversized messages.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `08006` connection_failure: the backend connection broke.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08001` sqlclient_unable_to_establish_sqlconnection: no backend could be opened.
pub const CANNOT_CONNECT: &str = "08001";
/// `0A000` feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `28P01` invalid_password: any authentication failure, whatever its cause.
pub const INVALID_PASSWORD: &str = "28P01";
/// `28000` invalid_authorization_specification: TLS required but not used.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `42501` insufficient_privilege: a statement outside the tenant's namespace (a foreign
/// notification channel, a change of `pgtenant.tenant`).
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `53300` too_many_connections: no backend within the queue timeout.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `53400` configuration_limit_exceeded: a tenant is over its transaction rate.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// `57P01` admin_shutdown: the proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now: a support login while the audit log cannot be written.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `55000` object_not_in_prerequisite_state: the tenant is suspended.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `22023` invalid_parameter_value: a startup parameter PostgreSQL refused.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `42704` undefined_object: a startup parameter name that cannot be a setting.
pub const UNDEFINED_OBJECT: &str = "42704";
/// `XX000` internal_error: a bug in the proxy, never expected.
pub const INTERNAL_ERROR: &str = "XX000";
