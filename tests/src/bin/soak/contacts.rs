//! The store against the model: every contact of the soak's accounts, field by field; and
//! the views against what the real `projector replay` builds from the streams.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use bulk_tests::{Deployment, ONE_REPLY};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use crate::model::{Contacts, Expected};
use crate::report::Tally;

/// Keys every contact the platform inserted has, besides the managed fields it was given.
const ALWAYS: [&str; 6] = [
    "_id",
    "accountId",
    "email",
    "createdAt",
    "updatedAt",
    "createdByBulkAction",
];
const MANAGED: [&str; 3] = ["name", "age", "status"];

pub async fn check_contacts(
    tally: &Tally,
    database: &mongodb::Database,
    expected: &Contacts,
    accounts: &[String],
) -> Result<()> {
    let collection = database.collection::<Document>(infra::mongo::CONTACTS);
    for account in accounts {
        let stored: Vec<Document> = collection
            .find(doc! { "accountId": account })
            .batch_size(ONE_REPLY)
            .await?
            .try_collect()
            .await?;
        let mut seen = BTreeSet::new();
        for contact in &stored {
            let email = contact.get_str("email").unwrap_or("?").to_owned();
            let subject = format!("{account} {email}");
            if !seen.insert(email.clone()) {
                tally.violation(
                    "contact_twice",
                    &subject,
                    "two documents for one (accountId, email)",
                );
                continue;
            }
            tally.bump("checked", "contacts in the store");
            let want = expected
                .by_email
                .get(&(account.clone(), email))
                .cloned()
                .unwrap_or(Expected::Absent);
            compare(tally, &subject, contact, &want);
        }
        for ((owner, email), want) in &expected.by_email {
            let present = matches!(want, Expected::Present { .. });
            if owner == account && present && !seen.contains(email) {
                tally.violation(
                    "contact_missing",
                    format!("{account} {email}"),
                    format!("expected {want:?}"),
                );
            }
        }
    }
    Ok(())
}

fn compare(tally: &Tally, subject: &str, contact: &Document, want: &Expected) {
    let (name, age, status, created_by) = match want {
        Expected::Present {
            name,
            age,
            status,
            created_by,
        } => (name, age, status, created_by),
        Expected::Absent => {
            tally.violation("contact_should_not_exist", subject, format!("{contact}"));
            return;
        }
        Expected::DeadLettered { before, action } => {
            tally.bump("checked", "contacts last touched by a dead-lettered record");
            if **before != Expected::Absent {
                return compare(tally, subject, contact, before);
            }
            tally.violation(
                "dead_lettered_record_applied",
                subject,
                format!("dead-lettered by {action}, yet stored: {contact}"),
            );
            return;
        }
    };
    let mut problems = Vec::new();
    if contact.get_str("name").ok() != name.as_deref() {
        problems.push(format!(
            "name {:?} != expected {name:?}",
            contact.get("name")
        ));
    }
    let stored_age = match contact.get("age") {
        Some(Bson::Int32(age)) => Some(i64::from(*age)),
        Some(Bson::Int64(age)) => Some(*age),
        _ => None,
    };
    if stored_age != *age || (contact.contains_key("age") && stored_age.is_none()) {
        problems.push(format!("age {:?} != expected {age:?}", contact.get("age")));
    }
    if contact.get_str("status").ok() != status.as_deref() {
        problems.push(format!(
            "status {:?} != expected {status:?}",
            contact.get("status")
        ));
    }
    // Unknown (empty) when the soak only learnt of the contact from an `updated` outcome.
    let creator = contact.get_str("createdByBulkAction").ok();
    if !created_by.is_empty() && creator != Some(created_by.as_str()) {
        problems.push(format!(
            "createdByBulkAction {:?} != expected {created_by}",
            contact.get("createdByBulkAction")
        ));
    }
    let allowed: BTreeSet<&str> = ALWAYS.into_iter().chain(MANAGED).collect();
    for key in contact.keys().filter(|key| !allowed.contains(key.as_str())) {
        problems.push(format!("unexpected field {key:?}"));
    }
    if !problems.is_empty() {
        tally.violation("contact_differs", subject, problems.join("; "));
    }
}

/// Stops the live projector, runs the real `projector replay` into empty views, and
/// compares views and log buckets document by document.
pub async fn check_replay(tally: &Tally, deployment: &mut Deployment) -> Result<()> {
    let views = deployment.all_docs(infra::mongo::ACTION_VIEWS).await?;
    let buckets = deployment.all_docs(infra::mongo::LOG_VIEWS).await?;
    deployment.kill_projector();
    deployment.replay().await?;
    for (collection, before) in [
        (infra::mongo::ACTION_VIEWS, views),
        (infra::mongo::LOG_VIEWS, buckets),
    ] {
        let after = deployment.all_docs(collection).await?;
        tally.add(
            "checked",
            format!("{collection} documents against replay"),
            before.len() as u64,
        );
        let by_id = |docs: Vec<Document>| -> BTreeMap<String, Document> {
            docs.into_iter()
                .map(|doc| (doc.get("_id").map(Bson::to_string).unwrap_or_default(), doc))
                .collect()
        };
        let (before, after) = (by_id(before), by_id(after));
        for (id, doc) in &before {
            match after.get(id) {
                None => tally.violation(
                    "replay_lacks_document",
                    format!("{collection} {id}"),
                    "live, not after replay",
                ),
                Some(replayed) if replayed != doc => tally.violation(
                    "replay_differs",
                    format!("{collection} {id}"),
                    format!("live {doc} / replayed {replayed}"),
                ),
                Some(_) => {}
            }
        }
        for id in after.keys().filter(|id| !before.contains_key(*id)) {
            tally.violation(
                "replay_adds_document",
                format!("{collection} {id}"),
                "after replay, not live",
            );
        }
    }
    deployment.start_projector()?;
    Ok(())
}
