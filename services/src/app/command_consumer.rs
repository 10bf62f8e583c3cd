//! A service's command consumer: the [`Handler`] that hands a service's command stream to its
//! handlers (saga commands) or to the API's commands (commands forwarded by a query node).

use std::sync::Arc;

use aggregates::saga::Service;
use event_store::{RecordedEvent, Storage};

use crate::app::consumer::{Handler, Source};
use crate::app::error::HandlerError;
use crate::app::gateway::PaymentGateway;
use crate::app::handlers::Handlers;
use crate::app::messages::{self, ConsumerName};

/// A service's command consumer.
#[derive(Debug)]
pub struct CommandConsumer<S: Storage, G: PaymentGateway> {
    handlers: Arc<Handlers<S, G>>,
    service: Service,
    name: ConsumerName,
}

impl<S: Storage, G: PaymentGateway> CommandConsumer<S, G> {
    /// The consumer of `service`'s commands.
    pub fn new(handlers: Arc<Handlers<S, G>>, service: Service) -> Self {
        Self { handlers, service, name: ConsumerName::of_service(service) }
    }
}

impl<S: Storage, G: PaymentGateway> Handler for CommandConsumer<S, G> {
    fn name(&self) -> &str {
        self.name.as_str()
    }
    fn source(&self) -> Source {
        Source::Categories(vec![messages::commands_category(self.service)])
    }
    fn accepts(&self, _: &RecordedEvent) -> bool {
        true
    }
    fn partition_key(&self, e: &RecordedEvent) -> u64 {
        // One order's (or one SKU's) commands in order, on one worker.
        messages::shard_hash(&e.stream_id)
    }
    async fn handle(&self, e: &RecordedEvent, checkpoint: (String, u64)) -> Result<(), HandlerError> {
        match messages::ApiCommand::decode(e).map_err(HandlerError::bad_message)? {
            Some(forwarded) => {
                crate::app::commands::handle_forwarded(self.handlers.store(), e, &forwarded, checkpoint).await
            }
            None => self.handlers.handle_command(e, Some(checkpoint)).await,
        }
    }
}
