//! The path parameters of the API's operations, each kind declared once: the handler reads a
//! type of this module (`let path::Member { id, user } = s.path()?;`) and the operation's
//! annotation lists the same type (`params(path::Member)`), so what is checked and what is
//! described cannot drift apart.

use actix_web::HttpRequest;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{Ref, Required};
use utoipa::{IntoParams, ToSchema};

use confab_actors::error::Error;

use super::schema::{ConvId, Id, SafeInt};

/// Parameters read from a request's path, in the order declared (see [`Signed::path`](super::Signed::path)).
pub trait PathParams: Sized {
    fn read(req: &HttpRequest) -> Result<Self, Error>;
}

/// How a path parameter of this schema is read.
pub trait Kind {
    type Value;
    fn read(req: &HttpRequest, name: &str) -> Result<Self::Value, Error>;
}

/// An id, checked as one.
impl Kind for Id {
    type Value = String;
    fn read(req: &HttpRequest, name: &str) -> Result<String, Error> {
        super::path_id(req, name)
    }
}

/// A conversation id, as given (the engine checks it).
impl Kind for ConvId {
    type Value = String;
    fn read(req: &HttpRequest, name: &str) -> Result<String, Error> {
        Ok(super::path_raw(req, name))
    }
}

/// A seq or event id, at most [`MAX_SAFE_INT`](super::MAX_SAFE_INT).
impl Kind for SafeInt {
    type Value = u64;
    fn read(req: &HttpRequest, name: &str) -> Result<u64, Error> {
        super::path_int(req, name)
    }
}

/// Declares path parameter types: `Member { id: Id "The group id", user: Id "The member" }` is
/// `{id}` and `{user}`, both read and described as [`Id`]s.
macro_rules! path_params {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $kind:ident $description:literal),+ })+) => {$(
        $(#[$doc])*
        pub struct $name {
            $(pub $field: <$kind as Kind>::Value,)+
        }

        impl PathParams for $name {
            fn read(req: &HttpRequest) -> Result<Self, Error> {
                Ok(Self { $($field: $kind::read(req, stringify!($field))?,)+ })
            }
        }

        impl IntoParams for $name {
            fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
                vec![$(param::<$kind>(stringify!($field), $description),)+]
            }
        }
    )+};
}

path_params! {
    /// `{id}`: a user.
    User { id: Id "The user id" }
    /// `{id}`: a group.
    Group { id: Id "The group id" }
    /// `{id}`: a file.
    File { id: Id "The file id" }
    /// `{id}`: a broadcast.
    Broadcast { id: Id "The broadcast id" }
    /// `{id}` and `{device}`: a user and one of their devices.
    UserDevice { id: Id "The user id", device: Id "The device id" }
    /// `{id}` and `{user}`: a group and one of its members.
    Member { id: Id "The group id", user: Id "The member" }
    /// `{conv_id}`: a conversation.
    Conv { conv_id: ConvId "`d_…` or `g_<group id>`" }
    /// `{conv_id}` and `{seq}`: a message.
    Message { conv_id: ConvId "`d_…` or `g_<group id>`", seq: SafeInt "The message's seq" }
    /// `{id}` and `{conv_id}`: a user and one of their conversations.
    UserConv { id: Id "The user id", conv_id: ConvId "`d_…` or `g_<group id>`" }
    /// `{id}` and `{peer}`: a user and another user (contacts).
    Peer { id: Id "The user id", peer: Id "The other user" }
    /// `{id}`: a webhook event.
    Event { id: SafeInt "The event id" }
}

/// The description of the required path parameter `name`, of the component schema `T`.
fn param<T: ToSchema>(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .description(Some(description))
        .required(Required::True)
        .schema(Some(Ref::from_schema_name(T::name())))
        .build()
}
