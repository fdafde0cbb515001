//! Rows for `COPY … FROM STDIN (FORMAT binary)`, the fastest way to load
//! rows into Postgres.
//!
//! The format is a header, then per row a field count and each field as a
//! length and its bytes, then a trailer (PostgreSQL's documentation, "COPY",
//! "Binary Format"). Each field's bytes are its type's binary form, which
//! sqlx's `Encode` writes exactly as it does for a bound parameter, so only
//! the framing is ours.

use sqlx::{encode::IsNull, error::BoxDynError, postgres::PgArgumentBuffer, Encode, Postgres};

/// The signature, flags (no OIDs) and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// A COPY's rows in binary form, built row by row.
pub struct BinaryRows {
    buffer: PgArgumentBuffer,
    rows: usize,
}

impl BinaryRows {
    pub fn new() -> Self {
        let mut buffer = PgArgumentBuffer::default();
        buffer.extend_from_slice(HEADER);
        Self { buffer, rows: 0 }
    }

    /// Starts a row of `fields` fields; exactly that many [`field`] calls follow.
    ///
    /// [`field`]: BinaryRows::field
    pub fn row(&mut self, fields: i16) {
        self.buffer.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    /// Appends one field: its length, then its binary form; -1 for NULL.
    pub fn field<'q, T: Encode<'q, Postgres>>(&mut self, value: &T) -> Result<(), BoxDynError> {
        let at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        let length = match value.encode_by_ref(&mut self.buffer)? {
            IsNull::Yes => {
                self.buffer.truncate(at + 4);
                -1
            }
            IsNull::No => i32::try_from(self.buffer.len() - at - 4)?,
        };
        self.buffer[at..at + 4].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }

    /// How many rows were started.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The whole COPY input, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1i16).to_be_bytes());
        std::mem::take(&mut *self.buffer)
    }
}

/// JSON text as a `jsonb` field: its binary form is a version byte (1)
/// followed by the text, which Postgres parses, and refuses with a data
/// error when it is not JSON.
pub struct JsonbText<'a>(pub &'a str);

impl sqlx::Type<Postgres> for JsonbText<'_> {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_name("jsonb")
    }
}

impl Encode<'_, Postgres> for JsonbText<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(1);
        buf.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

impl Default for BinaryRows {
    fn default() -> Self {
        Self::new()
    }
}
