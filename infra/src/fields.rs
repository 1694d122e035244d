//! An account's custom field definitions, one JSON document per entity type, in the
//! account's partition (`P:{n}:fields:<account>:<entityType>`). Read at every submission,
//! written by the account itself (`PUT /fields/{entityType}`). Beside them, which unique
//! field holds which external id slot (`P:{n}:slots:<account>:<entityType>`), for good:
//! documents keep a slot's values whatever the definition says later.

use domain::fields::FieldDefinitions;
use domain::{AccountId, EntityType};
use redis::AsyncCommands;

use crate::event_store::{EventStore, StoreError};
use crate::roles::Submissions;

impl EventStore {
    /// The account's definitions for `entity`; none defined is an empty definition.
    pub async fn field_definitions(
        &self,
        account: &AccountId,
        entity: EntityType,
    ) -> Result<FieldDefinitions, StoreError> {
        let stored: Option<String> = self
            .conn
            .clone()
            .get(self.keys.field_definitions(account, entity))
            .await?;
        match stored {
            None => Ok(FieldDefinitions::default()),
            Some(json) => Ok(serde_json::from_str(&json)?),
        }
    }

    /// The fields bound to slots, by slot.
    pub async fn external_id_slots(
        &self,
        account: &AccountId,
        entity: EntityType,
    ) -> Result<Vec<(u8, String)>, StoreError> {
        let key = self.keys.external_id_slots(account, entity);
        let held: std::collections::HashMap<String, String> =
            self.conn.clone().hgetall(&key).await?;
        let mut slots: Vec<(u8, String)> = held
            .into_iter()
            .filter_map(|(field, name)| Some((field.strip_prefix("slot:")?.parse().ok()?, name)))
            .collect();
        slots.sort();
        Ok(slots)
    }
}

impl Submissions {
    /// The slot bound to the account's unique field `name` of `entity`: the one it holds,
    /// or the first free one, taken for good; `None` when every slot holds another field.
    /// Each slot is taken with `HSETNX`, so concurrent definitions never share one.
    pub async fn external_id_slot(
        &self,
        account: &AccountId,
        entity: EntityType,
        name: &str,
    ) -> Result<Option<u8>, StoreError> {
        let key = self.keys.external_id_slots(account, entity);
        let mut conn = self.conn.clone();
        let slots = 1..=domain::fields::MAX_UNIQUE_FIELDS as u8;
        let fields: Vec<String> = slots.clone().map(|slot| format!("slot:{slot}")).collect();
        let holders: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&fields)
            .query_async(&mut conn)
            .await?;
        if let Some(slot) = slots
            .clone()
            .zip(&holders)
            .find_map(|(slot, holder)| (holder.as_deref() == Some(name)).then_some(slot))
        {
            return Ok(Some(slot));
        }
        for (slot, holder) in slots.zip(holders) {
            if holder.is_some() {
                continue;
            }
            let field = format!("slot:{slot}");
            let taken: bool = conn.hset_nx(&key, &field, name).await?;
            let holder: Option<String> = if taken {
                Some(name.to_owned())
            } else {
                conn.hget(&key, &field).await?
            };
            if holder.as_deref() == Some(name) {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Replaces the account's definitions for `entity` (checked by the caller).
    pub async fn put_field_definitions(
        &self,
        account: &AccountId,
        entity: EntityType,
        definitions: &FieldDefinitions,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(definitions)?;
        let _: () = self
            .conn
            .clone()
            .set(self.keys.field_definitions(account, entity), json)
            .await?;
        Ok(())
    }
}
