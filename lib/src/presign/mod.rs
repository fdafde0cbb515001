//! Presigned uploads: S3-compatible SigV4 URLs and Vercel Blob client tokens.
//!
//! Each provider turns "this key may upload this object" into something the
//! client can use without tollgate's credentials: a presigned `PUT` URL for
//! S3-compatible storage ([`s3`]), a client token for Vercel Blob.

pub mod blob;
pub mod s3;
