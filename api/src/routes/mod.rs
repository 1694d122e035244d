pub mod actions;
pub mod health;
pub mod logs;
