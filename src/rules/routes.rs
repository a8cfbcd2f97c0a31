//! Which rule queues read which table. Decode workers hold their tables' part of the
//! routes; a reload hands them new routes in-band (`Ingest::Reroute`), so the switch from a
//! rule's old version to its new one falls at one exact point of each table's stream.

use tokio::sync::mpsc;

use crate::batch::TableEvent;

/// Per table, the queues of the rules reading it.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_table: Vec<Vec<mpsc::Sender<TableEvent>>>,
}

impl Routes {
    pub fn new(tables: usize) -> Self {
        Routes {
            by_table: vec![Vec::new(); tables],
        }
    }

    /// Adds a rule's queue to one table.
    pub fn add(&mut self, table: usize, queue: mpsc::Sender<TableEvent>) {
        if let Some(queues) = self.by_table.get_mut(table) {
            queues.push(queue);
        }
    }

    pub fn tables(&self) -> usize {
        self.by_table.len()
    }

    /// The part a decode worker needs: the queues of its own tables, nothing for the others.
    pub fn for_tables(&self, tables: &[usize]) -> Vec<Vec<mpsc::Sender<TableEvent>>> {
        self.by_table
            .iter()
            .enumerate()
            .map(|(t, queues)| {
                if tables.contains(&t) {
                    queues.clone()
                } else {
                    Vec::new()
                }
            })
            .collect()
    }
}
