//! An account's custom field definitions, one JSON document per entity type, in the
//! account's partition (`P:{n}:fields:<account>:<entityType>`). Read at every submission,
//! written by the account itself (`PUT /fields/{entityType}`).

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
}

impl Submissions {
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
