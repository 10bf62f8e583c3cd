//! Stream names and the envelopes of commands, replies and dead letters on the log.
//!
//! | stream | holds |
//! |--------|-------|
//! | `order-<order id>` | Order events |
//! | `inventory-<sku>` | Inventory events of one SKU |
//! | `payment-<order id>`, `shipment-<order id>` | Payment and Shipping events |
//! | `saga-<order id>` | the saga's own events |
//! | `<service>_commands-<order id>` | commands the saga sent to a service (one event per send) |
//! | `inventory_commands-<sku>` | the saga's per-SKU stock commands, and stock added through the API |
//! | `replies-<order id>` | `CommandReplied`: a service's answer to a command |
//! | `saga_commands-<order id>` | an operator's action on a saga, forwarded by a query node to the saga pod that owns it |
//! | `answers-<key>` | `CommandAnswered`: the owner's answer to a REST command or an operator's action another node forwarded |
//! | `deadletters-<consumer>` | `DeadLettered` / `DeadLetterResolved` |
//!
//! Output events get deterministic ids ([`derived_id`]) from what caused them, so processing the
//! same input twice appends the same ids and the store's idempotency makes the second a no-op.
//!
//! Every stream has a **shard key** ([`shard_key`]): the part of its id after the category, i.e.
//! the order id for everything one order's saga touches and the SKU for stock. A distributed
//! deployment routes by it (the Kafka key), so a pod that owns a partition number owns all it
//! needs, and a stream's records share a key (per-stream order holds).

use aggregates::codec::DomainEvent;
use aggregates::saga::{Outcome, SagaCommand, Service};
use aggregates::{OrderId, Sku};
use event_store::{NewEvent, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Metadata key holding a command's idempotency key.
pub const COMMAND_ID: &str = "command_id";

/// Metadata key added to an event that arrived from another node (read from Kafka): the
/// CloudEvents source of the node that recorded it.
pub const SOURCE_KEY: &str = "kafka.source";

/// Metadata key of an event copied into the query role's log: the node it came from.
pub const REPLICA_OF: &str = "replica_of";

/// The categories of every node's events other than commands and dead letters (each has a
/// `<category>_domain_events` topic): the aggregates', the saga's, and the answers between
/// services and to forwarding nodes.
pub const EVENT_CATEGORIES: [&str; 7] =
    ["order", "inventory", "payment", "shipment", "saga", "replies", "answers"];

/// `order-<id>`.
pub fn order_stream(id: OrderId) -> StreamId {
    stream("order", id)
}

/// `inventory-<sku>`.
pub fn inventory_stream(sku: &Sku) -> Result<StreamId, event_store::Error> {
    StreamId::compose("inventory", sku)
}

/// `payment-<id>`.
pub fn payment_stream(id: OrderId) -> StreamId {
    stream("payment", id)
}

/// `shipment-<id>`.
pub fn shipment_stream(id: OrderId) -> StreamId {
    stream("shipment", id)
}

/// `saga-<id>`.
pub fn saga_stream(id: OrderId) -> StreamId {
    stream("saga", id)
}

/// `replies-<id>`.
pub fn replies_stream(id: OrderId) -> StreamId {
    stream("replies", id)
}

/// The command category of a service: `inventory_commands`, ...
pub fn commands_category(service: Service) -> String {
    format!("{}_commands", service.name())
}

/// `<service>_commands-<id>`.
pub fn commands_stream(service: Service, id: OrderId) -> StreamId {
    stream(&commands_category(service), id)
}

/// The stream a saga command is sent on: one SKU's stock command goes to
/// `inventory_commands-<sku>` (the inventory service shards by SKU), every other command to
/// `<service>_commands-<order id>`.
pub fn command_stream(command: &SagaCommand) -> StreamId {
    use SagaCommand as C;
    if let C::ReserveStock { lines, .. } | C::CommitStock { lines, .. } | C::ReleaseStock { lines, .. } =
        command
    {
        if let [line] = lines.as_slice() {
            if let Ok(stream) = StreamId::compose(&commands_category(Service::Inventory), &line.sku) {
                return stream;
            }
        }
    }
    commands_stream(command.service(), command.order_id())
}

/// The shard key of a stream: its id after the category (`order-<id>` → `<id>`,
/// `inventory-<sku>` → `<sku>`). A stream without a category is its own key.
pub fn shard_key(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(_, key)| key)
}

/// A stable hash of a stream's shard key, for spreading work over local workers so that
/// everything of one key stays in order.
pub fn shard_hash(stream_id: &str) -> u64 {
    key_hash(shard_key(stream_id))
}

/// The hash that spreads work over a process's workers (consumer partitions, the saga
/// manager's shards): stable within a process, the same for a key and for what wraps it (an
/// `OrderId` and its UUID). Kafka's partitions use murmur2 instead (`kafka::shard`), as every
/// Kafka client does.
pub fn key_hash<K: std::hash::Hash + ?Sized>(key: &K) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// `deadletters-<consumer>`.
pub fn dead_letter_stream(consumer: &str) -> Result<StreamId, event_store::Error> {
    StreamId::compose("deadletters", consumer)
}

fn stream(category: &str, id: OrderId) -> StreamId {
    // A category of ASCII letters and '_' plus a UUID always forms a valid stream id.
    StreamId::compose(category, id).unwrap_or_else(|_| unreachable_stream())
}

#[cold]
fn unreachable_stream() -> StreamId {
    // Only reachable if the category constants above were made invalid.
    StreamId::new("invalid-stream").unwrap_or_else(|e| panic!("static stream id: {e}"))
}

/// A deterministic id for the `index`-th event caused by `cause` in `scope`.
pub fn derived_id(cause: Uuid, scope: &str, index: usize) -> Uuid {
    Uuid::new_v5(&cause, format!("{scope}/{index}").as_bytes())
}

/// A domain event as a log event, with a deterministic id and correlation/causation.
pub fn domain_event<E: DomainEvent>(e: &E, id: Uuid, correlation: Uuid, causation: Uuid) -> NewEvent {
    NewEvent::json(e.event_type(), e.to_payload())
        .with_id(id)
        .with_schema_version(e.schema_version())
        .caused_by(correlation, causation)
}

/// The log event that sends `command` (one per send: a retry is a new event, same command id).
pub fn command_event(command_id: Uuid, send_id: Uuid, causation: Uuid, command: &SagaCommand) -> NewEvent {
    let payload = serde_json::to_vec(command).unwrap_or_default();
    NewEvent::json(command.name(), payload)
        .with_id(send_id)
        .caused_by(command.order_id().0, causation)
        .with_metadata(COMMAND_ID, command_id.to_string())
}

/// Decodes a command event.
pub fn decode_command(e: &RecordedEvent) -> Result<(Uuid, SagaCommand), String> {
    let id = e
        .metadata
        .get(COMMAND_ID)
        .ok_or("no command_id metadata")?
        .parse::<Uuid>()
        .map_err(|err| format!("bad command_id: {err}"))?;
    let cmd: SagaCommand =
        serde_json::from_slice(&e.payload).map_err(|err| format!("bad command payload: {err}"))?;
    if cmd.name() != e.event_type {
        return Err(format!("event type {} does not match payload {}", e.event_type, cmd.name()));
    }
    Ok((id, cmd))
}

/// `CommandReplied`: a service's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReplied {
    pub command_id: Uuid,
    pub command: String,
    pub order_id: OrderId,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// What the service answers with besides the outcome (a shipment's tracking number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The event type of a reply.
pub const REPLY_TYPE: &str = "CommandReplied";

/// The reply event for a command (deterministic id: one reply per command id).
pub fn reply_event(
    command_id: Uuid,
    command: &SagaCommand,
    outcome: Outcome,
    detail: Option<String>,
    causation: Uuid,
) -> NewEvent {
    let reply = CommandReplied {
        command_id,
        command: command.name().into(),
        order_id: command.order_id(),
        outcome,
        detail,
    };
    NewEvent::json(REPLY_TYPE, serde_json::to_vec(&reply).unwrap_or_default())
        .with_id(derived_id(command_id, "reply", 0))
        .caused_by(command.order_id().0, causation)
}

/// `DeadLettered`: a message a consumer could not process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettered {
    pub consumer: String,
    pub reason: String,
    pub position: u64,
    pub stream_id: String,
    pub event_id: Uuid,
    pub event_type: String,
    /// The original payload, as text (lossy for non-UTF-8 bytes).
    pub payload: String,
    /// The rest of the original, byte for byte (absent in letters written before it was kept):
    /// a pod whose log does not hold the original (a Kafka consumer's input) re-drives from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<OriginalEvent>,
}

/// What a [`DeadLettered`] keeps of its original event beyond its name and place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalEvent {
    pub version: u64,
    pub schema_version: u32,
    pub recorded_at_ns: u64,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub content_type: String,
    /// The payload bytes, base64 (standard alphabet, padded).
    pub payload_base64: String,
}

impl DeadLettered {
    /// The original event, as the consumer saw it (`None` for a letter without its original, or
    /// one whose kept payload does not decode).
    pub fn original_event(&self) -> Option<RecordedEvent> {
        use base64::Engine as _;
        let o = self.original.as_ref()?;
        let payload = base64::engine::general_purpose::STANDARD.decode(&o.payload_base64).ok()?;
        Some(RecordedEvent {
            position: self.position,
            stream_id: self.stream_id.clone(),
            version: o.version,
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: o.schema_version,
            recorded_at_ns: o.recorded_at_ns,
            correlation_id: o.correlation_id,
            causation_id: o.causation_id,
            metadata: o.metadata.clone(),
            payload,
            content_type: o.content_type.clone(),
        })
    }
}

/// `DeadLetterResolved`: a dead letter was re-driven successfully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterResolved {
    pub event_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_the_log_envelope() {
        let order = OrderId(Uuid::from_u128(5));
        let cmd = SagaCommand::ConfirmOrder { order_id: order, tracking_number: None };
        let e = command_event(Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), &cmd);
        let rec = RecordedEvent {
            position: 1,
            stream_id: commands_stream(Service::Order, order).to_string(),
            version: 1,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: 1,
            recorded_at_ns: 0,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            metadata: e.metadata.clone(),
            payload: e.payload.clone(),
            content_type: e.content_type.clone(),
        };
        assert_eq!(decode_command(&rec).expect("decode"), (Uuid::from_u128(1), cmd));
        assert_eq!(rec.stream_id, format!("order_commands-{order}"));
        let mut bad = rec.clone();
        bad.payload = b"{".to_vec();
        assert!(decode_command(&bad).is_err());
        let mut bad = rec;
        bad.metadata.clear();
        assert!(decode_command(&bad).is_err());
    }

    #[test]
    fn derived_ids_are_deterministic() {
        let c = Uuid::from_u128(9);
        assert_eq!(derived_id(c, "a", 0), derived_id(c, "a", 0));
        assert_ne!(derived_id(c, "a", 0), derived_id(c, "a", 1));
        assert_ne!(derived_id(c, "a", 0), derived_id(c, "b", 0));
    }
}

/// A REST command a node forwards to the role that owns its streams (through Kafka): appended to
/// `order_commands-<order>` or `inventory_commands-<sku>` on the forwarding node, handled by the
/// owner's command consumer. Its `key` is the client's idempotency key, so a repeat is a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ApiCommand {
    /// Place an order.
    PlaceOrder {
        key: Uuid,
        order_id: OrderId,
        customer_id: String,
        items: Vec<aggregates::order::LineItem>,
        currency: String,
        shipping_address: Option<aggregates::shipping::Address>,
    },
    /// Cancel an order on the customer's request.
    CancelOrder { key: Uuid, order_id: OrderId },
    /// Add stock to a SKU.
    AddStock { key: Uuid, sku: Sku, quantity: u64 },
}

/// Event types of forwarded REST commands.
pub const API_COMMAND_TYPES: [&str; 3] = ["ApiPlaceOrder", "ApiCancelOrder", "ApiAddStock"];

impl ApiCommand {
    /// The event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            ApiCommand::PlaceOrder { .. } => API_COMMAND_TYPES[0],
            ApiCommand::CancelOrder { .. } => API_COMMAND_TYPES[1],
            ApiCommand::AddStock { .. } => API_COMMAND_TYPES[2],
        }
    }

    /// The client's idempotency key.
    pub fn key(&self) -> Uuid {
        match self {
            ApiCommand::PlaceOrder { key, .. }
            | ApiCommand::CancelOrder { key, .. }
            | ApiCommand::AddStock { key, .. } => *key,
        }
    }

    /// The stream it is appended to on the forwarding node.
    pub fn stream(&self) -> Result<StreamId, event_store::Error> {
        match self {
            ApiCommand::PlaceOrder { order_id, .. } | ApiCommand::CancelOrder { order_id, .. } => {
                Ok(commands_stream(Service::Order, *order_id))
            }
            ApiCommand::AddStock { sku, .. } => {
                StreamId::compose(&commands_category(Service::Inventory), sku)
            }
        }
    }

    /// The event the node `source` appends (its id follows from the key and the node, so a
    /// repeated request to the same node adds nothing, and two nodes that forward the same key
    /// record two events: the owner's effect is idempotent by the key itself).
    pub fn to_event(&self, source: &str, trace: Option<&crate::app::trace::TraceContext>) -> NewEvent {
        crate::app::trace::traced(self.event(source), trace)
    }

    fn event(&self, source: &str) -> NewEvent {
        let key = self.key();
        let correlation = match self {
            ApiCommand::PlaceOrder { order_id, .. } | ApiCommand::CancelOrder { order_id, .. } => order_id.0,
            ApiCommand::AddStock { .. } => key,
        };
        NewEvent::json(self.event_type(), serde_json::to_vec(self).unwrap_or_default())
            .with_id(derived_id(key, &format!("forwarded/{source}"), 0))
            .with_metadata(COMMAND_ID, key.to_string())
            .caused_by(correlation, key)
    }

    /// Reads a forwarded command; `Ok(None)` for any other event.
    pub fn decode(e: &RecordedEvent) -> Result<Option<ApiCommand>, String> {
        if !API_COMMAND_TYPES.contains(&e.event_type.as_str()) {
            return Ok(None);
        }
        let cmd: ApiCommand =
            serde_json::from_slice(&e.payload).map_err(|err| format!("bad forwarded command: {err}"))?;
        if cmd.event_type() != e.event_type {
            return Err(format!("event type {} does not match payload {}", e.event_type, cmd.event_type()));
        }
        Ok(Some(cmd))
    }
}

/// The category of operators' actions forwarded to the saga pods (also their topic).
pub const SAGA_COMMANDS: &str = "saga_commands";

/// `saga_commands-<order id>`: routed like the order's other streams, to the saga pod that owns
/// the order's partition.
pub fn saga_commands_stream(id: OrderId) -> StreamId {
    stream(SAGA_COMMANDS, id)
}

/// The event type of a forwarded operator's action.
pub const SAGA_ACTION_TYPE: &str = "ApiSagaAction";

/// An operator's action on a saga that a query node forwards to the saga pod owning it (appended
/// to `saga_commands-<order>`, answered on `answers-<action id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaAction {
    pub order_id: OrderId,
    /// `retry`, `resume`, `compensate` or `mark-compensation-done`.
    pub action: String,
    /// Its idempotency key.
    pub action_id: Uuid,
    pub operator: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

impl SagaAction {
    /// The event a forwarding node appends: one per request (a fresh id), since the saga pod
    /// tells a repeat by the action id itself. So a retried request, on any query node, is
    /// answered as the saga pod decides it now (`repeated`, or a reused key for another body),
    /// never by an earlier request's refusal.
    pub fn to_event(&self, trace: Option<&crate::app::trace::TraceContext>) -> NewEvent {
        crate::app::trace::traced(self.event(), trace)
    }

    fn event(&self) -> NewEvent {
        NewEvent::json(SAGA_ACTION_TYPE, serde_json::to_vec(self).unwrap_or_default())
            .with_id(Uuid::now_v7())
            .with_metadata(COMMAND_ID, self.action_id.to_string())
            .caused_by(self.order_id.0, self.action_id)
    }

    /// Reads a forwarded action; `Ok(None)` for any other event.
    pub fn decode(e: &RecordedEvent) -> Result<Option<SagaAction>, String> {
        if e.event_type != SAGA_ACTION_TYPE {
            return Ok(None);
        }
        let action: SagaAction =
            serde_json::from_slice(&e.payload).map_err(|err| format!("bad forwarded saga action: {err}"))?;
        if e.stream_id != saga_commands_stream(action.order_id).as_str() {
            return Err(format!("a saga action for order {} on stream {}", action.order_id, e.stream_id));
        }
        Ok(Some(action))
    }
}

/// `answers-<key>`.
pub fn answers_stream(key: Uuid) -> StreamId {
    StreamId::compose("answers", key).unwrap_or_else(|_| unreachable_stream())
}

/// The event type of an answer to a forwarded command.
pub const ANSWER_TYPE: &str = "CommandAnswered";

/// How the owner answered a REST command another node forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Carried out now, or by an earlier delivery of the same command (the original outcome).
    Done {},
    /// The idempotency key was used before for a different request.
    KeyReused,
    /// The domain refused it.
    Rejected {
        /// Why.
        reason: String,
    },
    /// What it names does not exist.
    NotFound {
        /// What is missing.
        reason: String,
    },
    /// An operator's action on a saga was carried out (now, or before under the same key).
    Acted {
        /// The saga's state after it.
        status: String,
        /// The saga stream's version after it.
        version: u64,
        /// It had been carried out before: nothing was done now.
        repeated: bool,
    },
    /// An operator's action was refused: the saga's state does not allow it, or the saga is not
    /// at the version the request expected.
    Conflict {
        /// Why.
        reason: String,
        /// The saga's state, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// The saga stream's version, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// The request itself is wrong (an action that needs a reason came without one).
    Invalid {
        /// Why.
        reason: String,
    },
}

/// `CommandAnswered`: the owner's answer to a forwarded command, addressed to the node that
/// forwarded it (each forwarding node gets its own answer, so two query pods that forwarded the
/// same key with different bodies hear the truth each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAnswered {
    /// The client's idempotency key.
    pub key: Uuid,
    /// The forwarded command's event type.
    pub command: String,
    /// The CloudEvents source of the node that forwarded it.
    pub to: String,
    /// The answer.
    #[serde(flatten)]
    pub answer: Answer,
}

/// The id of the answer to the forwarded command `forwarded` (its event id) from the node
/// `source`: the forwarding node waits for this id.
pub fn answer_id(forwarded: Uuid, source: &str) -> Uuid {
    Uuid::new_v5(&forwarded, format!("answer/{source}").as_bytes())
}

/// The answer event.
pub fn answer_event(forwarded: &RecordedEvent, key: Uuid, source: &str, answer: Answer) -> NewEvent {
    let body = CommandAnswered { key, command: forwarded.event_type.clone(), to: source.to_owned(), answer };
    NewEvent::json(ANSWER_TYPE, serde_json::to_vec(&body).unwrap_or_default())
        .with_id(answer_id(forwarded.event_id, source))
        .caused_by(forwarded.correlation_id, forwarded.event_id)
}

/// A consumer that can dead-letter a message: the four services' command consumers and the saga
/// manager. The one list every place iterates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConsumerName {
    /// `order-service`.
    OrderService,
    /// `inventory-service`.
    InventoryService,
    /// `payment-service`.
    PaymentService,
    /// `shipping-service`.
    ShippingService,
    /// `saga-manager`.
    SagaManager,
}

impl ConsumerName {
    /// Every consumer.
    pub const ALL: [ConsumerName; 5] = [
        ConsumerName::OrderService,
        ConsumerName::InventoryService,
        ConsumerName::PaymentService,
        ConsumerName::ShippingService,
        ConsumerName::SagaManager,
    ];

    /// The consumer of a service's commands.
    pub fn of_service(service: Service) -> Self {
        match service {
            Service::Order => ConsumerName::OrderService,
            Service::Inventory => ConsumerName::InventoryService,
            Service::Payment => ConsumerName::PaymentService,
            Service::Shipping => ConsumerName::ShippingService,
        }
    }

    /// The service whose commands it handles (`None`: the saga manager).
    pub fn service(self) -> Option<Service> {
        match self {
            ConsumerName::OrderService => Some(Service::Order),
            ConsumerName::InventoryService => Some(Service::Inventory),
            ConsumerName::PaymentService => Some(Service::Payment),
            ConsumerName::ShippingService => Some(Service::Shipping),
            ConsumerName::SagaManager => None,
        }
    }

    /// Its name (checkpoints, dead-letter streams, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerName::OrderService => "order-service",
            ConsumerName::InventoryService => "inventory-service",
            ConsumerName::PaymentService => "payment-service",
            ConsumerName::ShippingService => "shipping-service",
            ConsumerName::SagaManager => "saga-manager",
        }
    }
}

impl std::fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConsumerName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ConsumerName::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ConsumerName::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown consumer {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Metadata key of a re-sent reply: the id of the reply it repeats.
pub const RESENT_OF: &str = "resent_of";

/// A copy of `reply` (a recorded `CommandReplied`), answering the redelivered command event
/// `redelivered`: the same answer again, so a saga whose reply was lost hears it. Its id follows
/// from the redelivery, so a repeat of that delivery adds nothing.
pub fn resent_reply(reply: &RecordedEvent, redelivered: &RecordedEvent) -> NewEvent {
    let e = NewEvent::json(REPLY_TYPE, reply.payload.clone())
        .with_id(derived_id(redelivered.event_id, "reply-again", 0))
        .caused_by(reply.correlation_id, redelivered.event_id)
        .with_metadata(RESENT_OF, reply.event_id.to_string());
    crate::app::trace::traced(e, crate::app::trace::TraceContext::of_event(reply).as_ref())
}
