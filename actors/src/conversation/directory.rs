//! The live conversation actors, started on demand on the conversation arbiters.

use super::*;

/// Live conversation actors by conversation id, and the arbiters they run on.
pub struct Directory {
    map: Mutex<HashMap<Arc<str>, Addr<ConversationActor>>>,
    arbiters: Vec<ArbiterHandle>,
}

impl Directory {
    /// `arbiters` are the threads conversation actors run on (chosen by conversation id).
    pub fn new(arbiters: Vec<ArbiterHandle>) -> Self {
        Self { map: Mutex::new(HashMap::new()), arbiters }
    }

    /// The live actor for `conv_id`, starting one if needed.
    pub fn get(self: &Arc<Self>, core: &Arc<Core>, conv_id: &str, init: Init) -> Result<Addr<ConversationActor>> {
        let kind = model::conv_kind(conv_id)?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = map.get(conv_id) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        let id: Arc<str> = Arc::from(conv_id);
        let actor = ConversationActor::new(core.clone(), self.clone(), id.clone(), kind, init);
        let addr = if self.arbiters.is_empty() {
            actor.start()
        } else {
            let mut h: usize = 0;
            for b in conv_id.bytes() {
                h = h.wrapping_mul(31).wrapping_add(b as usize);
            }
            let arbiter = &self.arbiters[h % self.arbiters.len()];
            ConversationActor::start_in_arbiter(arbiter, move |_| actor)
        };
        map.insert(id, addr.clone());
        Ok(addr)
    }

    /// The live actor for `conv_id`, if there is one (never starts one).
    pub fn peek(&self, conv_id: &str) -> Option<Addr<ConversationActor>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(conv_id).filter(|a| a.connected()).cloned()
    }

    /// Forgets the actor of `conv_id` (used when a conversation is created, so an actor that
    /// failed to load it a moment ago is not reused).
    pub fn evict(&self, conv_id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(conv_id);
    }

    /// Forgets `addr` as the actor of `conv_id` if it still is (it was found stopping).
    pub fn forget(&self, conv_id: &str, addr: &Addr<ConversationActor>) {
        self.remove(conv_id, addr)
    }

    pub(super) fn remove(&self, conv_id: &str, addr: &Addr<ConversationActor>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(conv_id) == Some(addr) {
            map.remove(conv_id);
        }
    }
}
