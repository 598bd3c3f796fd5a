//! The one error type of the API. What the client sees (code, message, details) is kept apart
//! from the internal cause, which is only logged.
use http::StatusCode;
use serde_json::{Map, Value};

/// The language of the messages: English unless `Accept-Language` prefers Portuguese.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Pt,
}

impl Lang {
    /// Picks the language with the highest q-value among those we speak.
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let Some(header) = header else { return Lang::En };
        let mut best = (Lang::En, -1.0f32);
        for part in header.split(',') {
            let mut it = part.trim().split(';');
            let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.parse::<f32>().ok()))
                .unwrap_or(1.0);
            let lang = if tag == "pt" || tag.starts_with("pt-") {
                Some(Lang::Pt)
            } else if tag == "en" || tag.starts_with("en-") || tag == "*" {
                Some(Lang::En)
            } else {
                None
            };
            if let Some(lang) = lang {
                if q > best.1 {
                    best = (lang, q);
                }
            }
        }
        best.0
    }

    pub fn pick<'a>(self, en: &'a str, pt: &'a str) -> &'a str {
        match self {
            Lang::En => en,
            Lang::Pt => pt,
        }
    }
}

/// A message in both languages we answer in.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub en: String,
    pub pt: String,
}

impl Msg {
    pub fn new(en: impl Into<String>, pt: impl Into<String>) -> Self {
        Self { en: en.into(), pt: pt.into() }
    }
    pub fn get(&self, lang: Lang) -> &str {
        lang.pick(&self.en, &self.pt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    ValidationError,
    InvalidJson,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PreconditionRequired,
    PayloadTooLarge,
    UnsupportedMediaType,
    NotAcceptable,
    RequestTimeout,
    IdempotencyKeyReused,
    Unauthorized,
    InsufficientScope,
    InvalidClient,
    InvalidScope,
    InvalidRequest,
    UnsupportedGrantType,
    RateLimited,
    ServiceUnavailable,
    InternalError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ValidationError => "VALIDATION_ERROR",
            Code::InvalidJson => "INVALID_JSON",
            Code::NotFound => "NOT_FOUND",
            Code::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Code::Conflict => "CONFLICT",
            Code::PreconditionFailed => "PRECONDITION_FAILED",
            Code::PreconditionRequired => "PRECONDITION_REQUIRED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Code::NotAcceptable => "NOT_ACCEPTABLE",
            Code::RequestTimeout => "REQUEST_TIMEOUT",
            Code::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::InsufficientScope => "INSUFFICIENT_SCOPE",
            Code::InvalidClient => "INVALID_CLIENT",
            Code::InvalidScope => "INVALID_SCOPE",
            Code::InvalidRequest => "INVALID_REQUEST",
            Code::UnsupportedGrantType => "UNSUPPORTED_GRANT_TYPE",
            Code::RateLimited => "RATE_LIMITED",
            Code::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Code::InternalError => "INTERNAL_ERROR",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::ValidationError | Code::InvalidJson | Code::InvalidScope | Code::InvalidRequest => {
                StatusCode::BAD_REQUEST
            }
            Code::UnsupportedGrantType => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Code::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unauthorized | Code::InvalidClient => StatusCode::UNAUTHORIZED,
            Code::InsufficientScope => StatusCode::FORBIDDEN,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One problem with one field of a request, for `details`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub msg: Msg,
}

impl FieldError {
    pub fn new(field: impl Into<String>, en: impl Into<String>, pt: impl Into<String>) -> Self {
        Self { field: field.into(), msg: Msg::new(en, pt) }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: Msg,
    pub details: Vec<(String, Value)>,
    /// Details given in both languages (field validation messages).
    pub field_errors: Vec<FieldError>,
    pub headers: Vec<(&'static str, String)>,
    /// The RFC 6749 / RFC 6750 `error` value, where OAuth asks for one.
    pub oauth_error: Option<&'static str>,
    /// Logged, never shown.
    pub cause: Option<String>,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(code: Code, en: impl Into<String>, pt: impl Into<String>) -> Self {
        Self {
            code,
            message: Msg::new(en, pt),
            details: Vec::new(),
            field_errors: Vec::new(),
            headers: Vec::new(),
            oauth_error: None,
            cause: None,
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let (en, pt) = match errors.as_slice() {
            [one] => (
                format!("Field '{}' is invalid", one.field),
                format!("Campo '{}' inválido", one.field),
            ),
            _ => ("Some fields are invalid".to_string(), "Alguns campos são inválidos".to_string()),
        };
        let mut e = Self::new(Code::ValidationError, en, pt);
        e.field_errors = errors;
        e
    }

    pub fn field(field: &str, en: &str, pt: &str) -> Self {
        Self::validation(vec![FieldError::new(field, en, pt)])
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            Code::NotFound,
            format!("{what} not found"),
            format!("{} não encontrado", match what {
                "Customer" => "Cliente",
                "Sync job" => "Job de sincronização",
                "Webhook" => "Webhook",
                "Delivery" => "Entrega",
                "Route" => "Recurso",
                other => other,
            }),
        )
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            Code::InternalError,
            "An unexpected error occurred",
            "Ocorreu um erro inesperado",
        );
        e.cause = Some(cause.to_string());
        e
    }

    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            Code::ServiceUnavailable,
            "The service is temporarily unavailable, retry later",
            "Serviço temporariamente indisponível, tente novamente",
        );
        e.cause = Some(cause.to_string());
        e.headers.push(("retry-after", "1".into()));
        e
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.push((key.to_string(), value.into()));
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_oauth_error(mut self, error: &'static str) -> Self {
        self.oauth_error = Some(error);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The spec's error body: `{traceId, code, message, details}` (+ `error` for OAuth).
    pub fn body(&self, trace_id: &str, lang: Lang) -> Value {
        let mut details = Map::new();
        for f in &self.field_errors {
            details.insert(f.field.clone(), Value::String(f.msg.get(lang).to_string()));
        }
        for (k, v) in &self.details {
            details.insert(k.clone(), v.clone());
        }
        let mut body = Map::new();
        body.insert("traceId".into(), Value::String(trace_id.to_string()));
        body.insert("code".into(), Value::String(self.code.as_str().to_string()));
        body.insert("message".into(), Value::String(self.message.get(lang).to_string()));
        body.insert("details".into(), Value::Object(details));
        if let Some(e) = self.oauth_error {
            body.insert("error".into(), Value::String(e.to_string()));
            body.insert("error_description".into(), Value::String(self.message.en.clone()));
        }
        Value::Object(body)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        match e {
            S::NotFound => ApiError::not_found("Resource"),
            S::PreconditionFailed => ApiError::new(
                Code::PreconditionFailed,
                "The resource has changed since it was read (ETag mismatch)",
                "O recurso foi alterado desde a leitura (ETag divergente)",
            ),
            S::Conflict { field, existing_id } => ApiError::new(
                Code::Conflict,
                format!("A resource with this {field} already exists"),
                format!("Já existe um recurso com este {field}"),
            )
            .with_detail("field", field)
            .with_detail("existingId", existing_id),
            S::Unavailable(cause) => ApiError::unavailable(cause),
            S::Internal(cause) => ApiError::internal(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_prefers_portuguese_when_weighted_higher() {
        assert_eq!(Lang::from_accept_language(Some("pt-BR,pt;q=0.9,en;q=0.8")), Lang::Pt);
        assert_eq!(Lang::from_accept_language(Some("en-US,pt-BR;q=0.5")), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("fr")), Lang::En);
        assert_eq!(Lang::from_accept_language(None), Lang::En);
    }

    #[test]
    fn error_body_has_the_spec_shape_and_translates_details() {
        let e = ApiError::field("email", "Invalid format", "Formato inválido");
        let body = e.body("t1", Lang::Pt);
        assert_eq!(body["traceId"], "t1");
        assert_eq!(body["code"], "VALIDATION_ERROR");
        assert_eq!(body["message"], "Campo 'email' inválido");
        assert_eq!(body["details"]["email"], "Formato inválido");
        assert!(body.get("error").is_none());
    }
}
