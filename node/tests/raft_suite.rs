//! openraft's storage test suite against Tessera's log store and state
//! machine, on a real RocksDB in a temporary directory.

// openraft's suite returns its own (large) StorageError.
#![allow(clippy::result_large_err)]

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tessera_node::raft::log_store::LogStore;
use tessera_node::raft::state_machine::{GroupData, MetaState, StateMachine};
use tessera_node::raft::TypeConfig;
use tessera_node::storage::Storage;

struct Builder;

fn io(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(io)?;
        let storage = Storage::open(dir.path()).map_err(io)?;
        let meta = MetaState::load(&storage).map_err(io)?;
        let log = LogStore::new(0, storage.clone(), Arc::new(AtomicU64::new(u64::MAX)));
        let sm = StateMachine::open(0, storage, GroupData::Meta(Arc::new(meta))).map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}

/// Regression: the applied id was read back with the wrong type after a
/// restart (found by the leader-kill test), which corrupted `last_applied`.
#[tokio::test]
async fn applied_state_survives_reopen() -> Result<(), StorageError<u64>> {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    let dir = tempfile::tempdir().map_err(io)?;
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 42);
    {
        let storage = Storage::open(dir.path()).map_err(io)?;
        let meta = Arc::new(MetaState::load(&storage).map_err(io)?);
        let mut sm = StateMachine::open(0, storage, GroupData::Meta(meta)).map_err(io)?;
        let entry = Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Blank,
        };
        sm.apply(vec![entry]).await?;
    }
    let storage = Storage::open(dir.path()).map_err(io)?;
    let meta = Arc::new(MetaState::load(&storage).map_err(io)?);
    let mut sm = StateMachine::open(0, storage, GroupData::Meta(meta)).map_err(io)?;
    let (applied, _) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id));
    Ok(())
}
