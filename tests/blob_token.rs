//! Vercel Blob client tokens, checked by the official `@vercel/blob` package.

use chrono::{Duration, Utc};
use serde_json::{json, Value};
use tollgate::{
    presign::blob::{client_token, BlobConfig, ClientTokenRequest},
    secret::Secret,
};
use uuid::Uuid;

use crate::helpers::run_node_tests;

fn config(token: &str) -> BlobConfig {
    BlobConfig::from_lookup(&|name| (name == "BLOB_READ_WRITE_TOKEN").then(|| token.to_owned()))
        .expect("a well-formed read-write token")
        .expect("BLOB_READ_WRITE_TOKEN is set")
}

/// One entry of the file `tests/blob-js/token.test.mjs` reads.
fn case(signed_with: &BlobConfig, rw_token: &Secret, request: &ClientTokenRequest) -> Value {
    json!({
        "token": client_token(signed_with, request),
        "rw_token": rw_token.expose(),
        "pathname": request.pathname,
        "allowedContentTypes": request.allowed_content_types,
        "maximumSizeInBytes": request.maximum_size_in_bytes,
        "validUntil": request.valid_until.timestamp_millis(),
        "forged": !signed_with.read_write_token.matches(rw_token.expose()),
    })
}

/// The acceptance test: `npm ci` installs `@vercel/blob` and `node --test`
/// checks each token against what the package issues and verifies itself.
#[tokio::test]
async fn client_tokens_are_byte_for_byte_what_the_vercel_blob_package_issues_and_verifies() {
    let store = config("vercel_blob_rw_Tg7store42_kQ9xZ2mVn8pLr4Ts_Wy1");
    let impostor = config("vercel_blob_rw_Tg7store42_notTheRealSecret");
    let images = vec!["image/png".to_owned(), "image/jpeg".to_owned()];
    let anything_text = vec!["text/*".to_owned(), "application/json".to_owned()];
    let now = Utc::now();
    let requests = [
        ClientTokenRequest {
            pathname: "key_01HZX/2030/01/0c4e-photo.png",
            allowed_content_types: &images,
            maximum_size_in_bytes: 100 * 1024 * 1024,
            valid_until: now + Duration::minutes(15),
        },
        ClientTokenRequest {
            pathname: "key_01HZX/2030/01/9a1f-Résumé 履歴書 📄.txt",
            allowed_content_types: &anything_text,
            maximum_size_in_bytes: 1,
            valid_until: now + Duration::days(7),
        },
        ClientTokenRequest {
            pathname: "key_01HZX/2030/12/77aa-quote\"back\\slash+plus&amp.json",
            allowed_content_types: &anything_text,
            // The 5 TB ceiling Vercel Blob documents, still exact in a JS number.
            maximum_size_in_bytes: 5 * 1024_u64.pow(4),
            valid_until: now + Duration::seconds(90),
        },
    ];
    let mut cases: Vec<Value> = requests
        .iter()
        .map(|request| case(&store, &store.read_write_token, request))
        .collect();
    cases.push(case(&impostor, &store.read_write_token, &requests[1]));

    let tokens_file = std::env::temp_dir().join(format!("blob-tokens-{}.json", Uuid::new_v4()));
    std::fs::write(&tokens_file, serde_json::to_vec(&cases).unwrap()).unwrap();

    let file = tokens_file.to_string_lossy().into_owned();
    run_node_tests("blob-js", "@vercel/blob", &[("BLOB_TOKENS_FILE", &file)]).await;
    let _ = std::fs::remove_file(&tokens_file);
}
