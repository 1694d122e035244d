//! Realistic input, the same for every run of a seed: mostly new contacts, some later
//! repeats of an earlier email in another case, some records that fail validation.
//!
//! Each record's kind comes from a hash of (seed, index), so any slice of the input can be
//! made again without the rest: the raw-store baseline writes exactly the records the
//! platform keeps, without holding a million of them.

use std::io::Write;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Per 1,000 records.
const INVALID_PER_MILLE: u64 = 20;
const DUPLICATE_PER_MILLE: u64 = 50;
const STATUSES: [&str; 4] = ["lead", "customer", "churned", "prospect"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new contact, kept by the platform.
    Unique,
    /// The email of an earlier unique record, in another case.
    Duplicate {
        of: u64,
    },
    Invalid,
}

pub struct Dataset {
    pub seed: u64,
    pub records: u64,
    /// Custom fields the account defines (`definition`).
    pub custom_fields: usize,
    /// How many of them a new contact carries values for (the last ones), at most.
    pub custom_values: usize,
}

/// The types the custom fields cycle through.
const CUSTOM_TYPES: [&str; 6] = ["string", "integer", "number", "boolean", "date", "string[]"];

/// The `PUT /fields/contact` body of `fields` custom fields `f0`, `f1`, ...
pub fn definition(fields: usize) -> Value {
    let fields: Vec<Value> = (0..fields)
        .map(|i| match CUSTOM_TYPES[i % CUSTOM_TYPES.len()] {
            "string" => json!({ "name": format!("f{i}"), "type": "string", "maxLength": 64 }),
            "integer" => {
                json!({ "name": format!("f{i}"), "type": "integer", "min": 0, "max": 1_000_000 })
            }
            "string[]" => json!({ "name": format!("f{i}"), "type": "string[]", "maxLength": 16 }),
            other => json!({ "name": format!("f{i}"), "type": other }),
        })
        .collect();
    json!({ "fields": fields })
}

impl Dataset {
    fn rng(&self, index: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn kind(&self, index: u64) -> Kind {
        let roll = self.rng(index).random_range(0..1000);
        if roll < INVALID_PER_MILLE {
            return Kind::Invalid;
        }
        if roll < INVALID_PER_MILLE + DUPLICATE_PER_MILLE && index > 0 {
            let mut rng = self.rng(index ^ 0xD0D0);
            loop {
                let of = rng.random_range(0..index);
                if self.kind(of) == Kind::Unique {
                    return Kind::Duplicate { of };
                }
            }
        }
        Kind::Unique
    }

    /// The fields of a unique record's contact.
    pub fn contact(&self, index: u64) -> (String, String, i64, &'static str) {
        let mut rng = self.rng(index ^ 0xC0C0);
        (
            format!("user{index}@example.com"),
            format!("Contact {index}"),
            rng.random_range(18..90),
            STATUSES[rng.random_range(0..STATUSES.len())],
        )
    }

    pub fn record(&self, index: u64) -> Value {
        match self.kind(index) {
            Kind::Unique => {
                let (email, name, age, status) = self.contact(index);
                let mut record =
                    json!({"email": email, "name": name, "age": age, "status": status});
                // The last fields of the definition: a lookup walks past the others.
                let named = self.custom_fields.min(self.custom_values);
                for i in self.custom_fields - named..self.custom_fields {
                    record[format!("f{i}")] = match CUSTOM_TYPES[i % CUSTOM_TYPES.len()] {
                        "string" => json!(format!("value {index}")),
                        "integer" => json!(index % 1_000_000),
                        "number" => json!(index as f64 / 7.0),
                        "boolean" => json!(index.is_multiple_of(2)),
                        "date" => json!("2026-12-02"),
                        _ => json!(["vip", format!("t{}", index % 50)]),
                    };
                }
                record
            }
            Kind::Duplicate { of } => {
                json!({"email": format!("User{of}@Example.COM"), "name": format!("Again {of}")})
            }
            Kind::Invalid => match index % 3 {
                0 => json!({"email": format!("user{index}-at-example.com")}),
                1 => json!({"email": format!("user{index}@example.com"), "age": "old"}),
                _ => json!({"email": format!("user{index}@example.com"), "phone": "555"}),
            },
        }
    }

    /// Writes every record as NDJSON; returns how many the platform will keep.
    pub fn write_ndjson(&self, out: impl Write) -> std::io::Result<u64> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut unique = 0;
        for index in 0..self.records {
            if self.kind(index) == Kind::Unique {
                unique += 1;
            }
            serde_json::to_writer(&mut out, &self.record(index))?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(unique)
    }

    /// The contacts the platform keeps, generated up front: a baseline that times a
    /// client's writes generates its data before the clock starts.
    pub fn kept_contacts(&self) -> Vec<(String, String, i64, &'static str)> {
        self.unique_indexes()
            .map(|index| self.contact(index))
            .collect()
    }

    pub fn unique_indexes(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.records).filter(|index| self.kind(*index) == Kind::Unique)
    }
}
