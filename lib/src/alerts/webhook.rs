//! Webhooks as Standard Webhooks sends them (standardwebhooks.com): a POST
//! of the JSON body with `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}`, keyed by the secret's decoded bytes), signed
//! by the `standardwebhooks` reference library.

use std::{fmt, time::Duration};

use base64::Engine;
use url::Url;

use crate::secret::Secret;

/// Where webhooks go: an http or https URL of at most 2048 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

/// The longest URL an endpoint may have.
pub const MAX_URL_LENGTH: usize = 2048;

impl WebhookUrl {
    /// Parses an endpoint's URL; the error says what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.len() > MAX_URL_LENGTH {
            return Err(format!(
                "a webhook URL is at most {MAX_URL_LENGTH} characters, got {}",
                value.len()
            ));
        }
        let url = Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
        // The parser normalises (a path `/` added, say): the stored form is
        // what must fit.
        if url.as_str().len() > MAX_URL_LENGTH {
            return Err(format!(
                "a webhook URL is at most {MAX_URL_LENGTH} characters, got {} once normalised",
                url.as_str().len()
            ));
        }
        match url.scheme() {
            "http" | "https" if url.host().is_some() => Ok(Self(url)),
            "http" | "https" => Err("a webhook URL needs a host".to_owned()),
            other => Err(format!(
                "a webhook URL is http or https, got scheme `{other}`"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A signing secret as Standard Webhooks writes it: `whsec_` and the
/// base64 of the key's bytes. Hidden from `Debug`.
#[derive(Clone)]
pub struct WebhookSecret(Secret);

const SECRET_PREFIX: &str = "whsec_";

impl WebhookSecret {
    /// Parses `whsec_<base64>` of 16 to 64 bytes.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let Some(encoded) = value.strip_prefix(SECRET_PREFIX) else {
            return Err("a webhook secret starts with `whsec_`".to_owned());
        };
        match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(Self(Secret::new(value))),
            Ok(bytes) => Err(format!(
                "a webhook secret holds 16 to 64 bytes, this one {}",
                bytes.len()
            )),
            Err(_) => Err("a webhook secret is `whsec_` and base64".to_owned()),
        }
    }

    /// A new secret of 32 random bytes.
    pub fn generate() -> Self {
        let key = super::random_key();
        Self(Secret::new(format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )))
    }

    /// The secret as written (`whsec_…`), to store or show once.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The `webhook-signature` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
        let webhook = standardwebhooks::Webhook::new(self.expose())
            .map_err(|e| anyhow::anyhow!("the webhook secret does not decode: {e}"))?;
        webhook
            .sign(id, timestamp, body)
            .map_err(|e| anyhow::anyhow!("signing a webhook: {e}"))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An endpoint: where to send, and the secret to sign with.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: WebhookUrl,
    pub secret: WebhookSecret,
}

/// What came of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer's status, if one came.
    pub status: Option<u16>,
    /// Why it did not count as delivered, if it did not.
    pub error: Option<String>,
    pub duration: Duration,
}

impl Outcome {
    /// A 2xx answer: delivered.
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }
}

/// The client webhooks go out on: bounded by `timeout` per request, and
/// following no redirect (a 3xx is not a delivery).
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("building the webhook client: {e}"))
}

/// POSTs one signed message. `timestamp` is the sending time in Unix
/// seconds: receivers compare it with their own clock to refuse replays.
pub async fn send(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    id: &str,
    timestamp: i64,
    body: Vec<u8>,
) -> Outcome {
    let started = std::time::Instant::now();
    let signature = match endpoint.secret.sign(id, timestamp, &body) {
        Ok(signature) => signature,
        Err(error) => {
            return Outcome {
                status: None,
                error: Some(format!("{error:#}")),
                duration: started.elapsed(),
            }
        }
    };
    let response = client
        .post(endpoint.url.as_str())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let (status, error) = match response {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => (
            Some(response.status().as_u16()),
            Some(format!("the endpoint answered {}", response.status())),
        ),
        Err(error) if error.is_timeout() => {
            (None, Some("the endpoint did not answer in time".into()))
        }
        Err(error) if error.is_connect() => {
            (None, Some("could not connect to the endpoint".into()))
        }
        Err(error) => (None, Some(format!("the request failed: {error}"))),
    };
    Outcome {
        status,
        error,
        duration: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_and_bounded() {
        assert!(WebhookUrl::parse("https://hooks.example.com/a?b=c").is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/").is_ok());
        assert!(WebhookUrl::parse("ftp://hooks.example.com/").is_err());
        assert!(WebhookUrl::parse("hooks.example.com").is_err());
        let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
        assert!(WebhookUrl::parse(&long).unwrap_err().contains("2048"));
        // 2048 as written, 2049 once the parser adds the path `/`.
        let host = format!("https://{}", "a".repeat(2040));
        assert_eq!(host.len(), 2048);
        assert!(WebhookUrl::parse(&host).unwrap_err().contains("normalised"));
    }

    #[test]
    fn secrets_are_whsec_and_base64_and_never_printed() {
        let secret = WebhookSecret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        assert!(WebhookSecret::parse(secret.expose()).is_ok());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification's test vectors.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret
            .sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#,
            )
            .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
