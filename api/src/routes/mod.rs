pub mod actions;
pub mod admin;
pub mod control;
pub mod fields;
pub mod health;
pub mod logs;
pub mod submit;
pub mod webhooks;
