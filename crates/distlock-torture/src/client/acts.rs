//! Recording acts on the fenced register, shared by every profile: the
//! grant a write is made under, its decision and its answer.

use std::time::Duration;

use crate::clock;
use crate::history::{Event, JsonLines, Mode};
use crate::register::Act;

/// The grant a write is made under.
#[derive(Clone, Copy, Debug)]
pub(super) struct Under<'a> {
    pub(super) grant: u64,
    pub(super) key: &'a str,
    pub(super) token: u64,
    /// What its acts need of the key.
    pub(super) act: Mode,
}

impl<'a> Under<'a> {
    /// Act `op` of client `client`/`incarnation` under the grant.
    pub(super) fn act(self, client: u32, incarnation: u32, op: u64) -> Act<'a> {
        Act {
            key: self.key,
            token: self.token,
            mode: self.act,
            client,
            incarnation,
            op,
        }
    }
}

/// Records the decision to write `op` under a grant.
pub(super) fn write_invoke(
    hist: &JsonLines,
    op: u64,
    under: Under<'_>,
    checked: i64,
    valid_until: i64,
    delay: Duration,
) {
    hist.append(&Event::WriteInvoke {
        op,
        grant: under.grant,
        key: under.key.to_owned(),
        token: under.token,
        mode: under.act,
        checked,
        valid_until,
        delay_ms: delay.as_millis() as u64,
        t: clock::now_ns(),
    });
}

/// Records the register's answer to write `op`.
pub(super) fn write_done(hist: &JsonLines, op: u64, result: std::io::Result<bool>) {
    let t = clock::now_ns();
    hist.append(&match result {
        Ok(accepted) => Event::WriteOk { op, accepted, t },
        Err(e) => Event::WriteFail {
            op,
            error: e.to_string(),
            t,
        },
    });
}
