//! Mailbox depth, which ractor does not expose, counted by the messages themselves: in when
//! made, out when the actor opens them or when they are dropped unopened (a stopped actor's
//! mailbox). Its own test binary, since it turns the instruments on for the whole process.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use gatehouse_actors::telemetry::{self, Counted, Mail};
use ractor::{Actor, ActorProcessingErr, ActorRef};

static DEPTH: AtomicI64 = AtomicI64::new(0);

struct Work;

impl Counted for Work {
    fn depth() -> &'static AtomicI64 {
        &DEPTH
    }
}

/// Handles one message per 20 ms, so that a burst waits in its mailbox.
struct Slow;

impl Actor for Slow {
    type Msg = Mail<Work>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Mail<Work>>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Mail<Work>>,
        msg: Mail<Work>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let Work = msg.open();
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

fn depth() -> i64 {
    DEPTH.load(Ordering::Relaxed)
}

#[tokio::test]
async fn messages_are_counted_out_when_handled_and_when_a_stopped_mailbox_drops_them() {
    telemetry::install();

    let a = Mail::new(Work);
    let b: Mail<Work> = Work.into();
    assert_eq!(depth(), 2);
    let Work = a.open();
    assert_eq!(depth(), 1);
    drop(b);
    assert_eq!(depth(), 0);

    let (actor, handle) = Actor::spawn(None, Slow, ()).await.expect("spawns");
    for _ in 0..50 {
        actor.send_message(Work.into()).expect("sent");
    }
    assert!(depth() > 40, "the burst waits in the mailbox: {}", depth());
    // Handled ones leave the count as they are opened.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while depth() > 45 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was handled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stopping drops the rest unhandled; they leave the count with the mailbox.
    actor.stop(None);
    handle.await.expect("the actor ends");
    drop(actor);
    assert_eq!(depth(), 0);
}
