//! Storage adapters implementing [`confab_actors::store::Store`].

pub mod embedded;
pub mod mongo;

pub use embedded::EmbeddedStore;
pub use mongo::{MongoOptions, MongoStore};
