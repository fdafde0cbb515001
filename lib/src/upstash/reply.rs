//! Redis replies as the Upstash REST API returns them, and their decoding.
//!
//! Upstash wraps every reply in JSON: integers become numbers, nil becomes
//! `null`, arrays stay arrays and strings stay strings. JSON strings cannot
//! carry arbitrary bytes, so the client asks for `Upstash-Encoding: base64`,
//! under which every string except the status reply `OK` is base64, the same
//! rule the official `@upstash/redis` client decodes by.

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use serde_json::Value;

use super::UpstashError;

/// One Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    /// A bulk or status string, as bytes.
    Bulk(Bytes),
    Array(Vec<Reply>),
}

impl Reply {
    /// Decodes the JSON `result` of a base64-encoded Upstash response.
    pub fn from_base64_json(value: Value) -> Result<Self, UpstashError> {
        decode(value, true)
    }

    /// Decodes the JSON `result` of a plain (unencoded) Upstash response.
    pub fn from_plain_json(value: Value) -> Result<Self, UpstashError> {
        decode(value, false)
    }

    /// The reply as text, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Bulk(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

fn decode(value: Value, base64: bool) -> Result<Reply, UpstashError> {
    Ok(match value {
        Value::Null => Reply::Nil,
        Value::Bool(b) => Reply::Int(i64::from(b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Reply::Int(i),
            // Redis speaks integers; anything else is kept as its text.
            None => Reply::Bulk(Bytes::from(n.to_string())),
        },
        Value::String(s) if base64 && s != "OK" => {
            let bytes = STANDARD.decode(s.as_bytes()).map_err(|e| {
                UpstashError::Protocol(format!("a reply string is not valid base64: {e}"))
            })?;
            Reply::Bulk(Bytes::from(bytes))
        }
        Value::String(s) => Reply::Bulk(Bytes::from(s)),
        Value::Array(items) => Reply::Array(
            items
                .into_iter()
                .map(|item| decode(item, base64))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(_) => {
            return Err(UpstashError::Protocol(
                "a reply held a JSON object, which Redis never returns".to_owned(),
            ))
        }
    })
}

/// Conversion from a [`Reply`] into the type a caller expects.
pub trait FromReply: Sized {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError>;
}

fn shape_error(expected: &str, got: &Reply) -> UpstashError {
    UpstashError::Protocol(format!("expected {expected}, got {got:?}"))
}

impl FromReply for Reply {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError> {
        Ok(reply)
    }
}

impl FromReply for () {
    fn from_reply(_: Reply) -> Result<Self, UpstashError> {
        Ok(())
    }
}

impl FromReply for i64 {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError> {
        match &reply {
            Reply::Int(i) => Ok(*i),
            // Some commands (INCRBYFLOAT, HGET of a counter) answer numbers as strings.
            Reply::Bulk(_) => reply
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| shape_error("an integer", &reply)),
            _ => Err(shape_error("an integer", &reply)),
        }
    }
}

impl FromReply for Bytes {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError> {
        match reply {
            Reply::Bulk(bytes) => Ok(bytes),
            Reply::Int(i) => Ok(Bytes::from(i.to_string())),
            other => Err(shape_error("a string", &other)),
        }
    }
}

impl FromReply for String {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError> {
        let bytes = Bytes::from_reply(reply)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| UpstashError::Protocol("a reply string is not UTF-8".to_owned()))
    }
}

impl<T: FromReply> FromReply for Option<T> {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError> {
        match reply {
            Reply::Nil => Ok(None),
            other => T::from_reply(other).map(Some),
        }
    }
}

impl<T: FromReply> FromReply for Vec<T> {
    fn from_reply(reply: Reply) -> Result<Self, UpstashError> {
        match reply {
            Reply::Array(items) => items.into_iter().map(T::from_reply).collect(),
            Reply::Nil => Ok(Vec::new()),
            other => Err(shape_error("an array", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::from(s.to_owned()))
    }

    #[test]
    fn base64_strings_are_decoded_except_ok() {
        // "aGVsbG8=" is "hello"; "OK" is the one status sent as-is.
        let reply = Reply::from_base64_json(json!(["aGVsbG8=", "OK", 42, null])).unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![bulk("hello"), bulk("OK"), Reply::Int(42), Reply::Nil])
        );
    }

    #[test]
    fn base64_decodes_binary_and_nested_arrays() {
        let reply = Reply::from_base64_json(json!([["/wA=", "4pyT"]])).unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(&[0xff, 0x00])),
                bulk("✓"),
            ])])
        );
    }

    #[test]
    fn plain_strings_are_taken_as_they_are() {
        let reply = Reply::from_plain_json(json!("aGVsbG8=")).unwrap();
        assert_eq!(reply, bulk("aGVsbG8="));
    }

    #[test]
    fn invalid_base64_is_a_protocol_error() {
        let err = Reply::from_base64_json(json!("not base64!")).unwrap_err();
        assert!(matches!(err, UpstashError::Protocol(_)), "{err:?}");
    }

    #[test]
    fn objects_are_a_protocol_error() {
        assert!(Reply::from_plain_json(json!({"a": 1})).is_err());
    }

    #[test]
    fn typed_conversions_follow_the_reply_shape() {
        assert_eq!(i64::from_reply(Reply::Int(7)).unwrap(), 7);
        assert_eq!(i64::from_reply(bulk("12")).unwrap(), 12);
        assert!(i64::from_reply(bulk("x")).is_err());
        assert_eq!(String::from_reply(bulk("v")).unwrap(), "v");
        assert_eq!(Option::<String>::from_reply(Reply::Nil).unwrap(), None);
        assert_eq!(
            Vec::<i64>::from_reply(Reply::Array(vec![Reply::Int(1), Reply::Int(2)])).unwrap(),
            vec![1, 2]
        );
        assert!(String::from_reply(Reply::Array(vec![])).is_err());
    }
}
