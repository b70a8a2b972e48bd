//! The Task service's state machine against the fake agent and a fake VM:
//! no root, no KVM. Each test drives containerd's messages in the order
//! containerd (and its CRI) sends them and checks the answers, the events
//! and what happened to the VM.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use nacre_runtime::agent::fake::FakeAgent;
use nacre_runtime::container::ContainerError;
use nacre_runtime::pod::{FakeVm, Pod, Started};

use super::*;
use crate::vm::ContainerShare;

/// A share that mounts nothing and remembers what it was asked.
#[derive(Debug, Default)]
struct NoShare(Mutex<Vec<String>>);

impl ContainerShare for NoShare {
    fn bind_container(&self, _: &Bundle, cid: &str) -> std::result::Result<(), ContainerError> {
        self.0.lock().unwrap().push(format!("bind {cid}"));
        Ok(())
    }

    fn remove_container(&self, cid: &str) -> std::result::Result<(), ContainerError> {
        self.0.lock().unwrap().push(format!("remove {cid}"));
        Ok(())
    }
}

struct Fixture {
    inner: Arc<Inner>,
    agent: Arc<FakeAgent>,
    vm: FakeVm,
    share: Arc<NoShare>,
    boots: Arc<Mutex<u32>>,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(FakeAgent::blocking());
    let vm = FakeVm::new();
    let share = Arc::new(NoShare::default());
    let boots = Arc::new(Mutex::new(0));
    let boot: Boot = {
        let (agent, vm, share, boots) = (agent.clone(), vm.clone(), share.clone(), boots.clone());
        Arc::new(move |_id, dir, _config, shape, _pod| {
            *boots.lock().unwrap() += 1;
            let started = Started {
                vcpus: shape.vcpus,
                memory_mib: shape.memory_mib,
                kind: "cold",
                seconds: 0.0,
            };
            let pod = Pod::from_parts(agent.clone(), Box::new(vm.clone()), started);
            Ok(Vm::from_pod(pod, dir, share.clone()))
        })
    };
    let service = Service::with_boot(
        "test",
        "sb",
        dir.path().join("sandbox"),
        Ok(Config::default()),
        Publisher::recorder(),
        Arc::new(ExitSignal::default()),
        boot,
    );
    Fixture {
        inner: service.inner,
        agent,
        vm,
        share,
        boots,
        dir,
    }
}

impl Drop for Fixture {
    /// Ends what still waits in the fake guest: the runtime's shutdown
    /// waits for its blocking tasks.
    fn drop(&mut self) {
        self.agent.disconnect();
    }
}

impl Fixture {
    /// A bundle for container `cid` (a spec and an empty rootfs).
    fn bundle(&self, cid: &str) -> String {
        let bundle = self.dir.path().join("bundles").join(cid);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}]}
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        bundle.to_string_lossy().into_owned()
    }

    async fn create(&self, cid: &str) -> Result<CreateTaskResponse> {
        let bundle = self.bundle(cid);
        self.inner
            .create(CreateTaskRequest {
                id: cid.into(),
                bundle,
                ..Default::default()
            })
            .await
    }

    async fn start(&self, cid: &str, exec_id: &str) -> Result<StartResponse> {
        self.inner
            .start(StartRequest {
                id: cid.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn kill(&self, cid: &str, exec_id: &str, signal: u32) -> Result<()> {
        self.inner
            .kill(KillRequest {
                id: cid.into(),
                exec_id: exec_id.into(),
                signal,
                ..Default::default()
            })
            .await
    }

    async fn delete(&self, cid: &str, exec_id: &str) -> Result<DeleteResponse> {
        self.inner
            .delete(DeleteRequest {
                id: cid.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn exec(&self, cid: &str, exec_id: &str) -> Result<()> {
        self.inner
            .exec(ExecProcessRequest {
                id: cid.into(),
                exec_id: exec_id.into(),
                spec: Some(Any {
                    value: br#"{"args":["true"],"cwd":"/"}"#.to_vec(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .await
    }

    /// Waits for the exit of `exec_id` of `cid`, as Task.Wait does.
    async fn wait(&self, cid: &str, exec_id: &str) -> u32 {
        let mut rx = self
            .inner
            .with_process(cid, exec_id, |p| Ok(p.exit.subscribe()))
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
            .await
            .expect("the exit is recorded within 30 s")
            .unwrap();
        exit.unwrap().status
    }

    async fn status(&self, cid: &str, exec_id: &str) -> Result<Status> {
        self.inner
            .state(StateRequest {
                id: cid.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
            .map(|s| s.status.enum_value_or_default())
    }

    fn events(&self) -> Vec<String> {
        self.inner.publisher.recorded()
    }

    /// The events once `topic` is among them: an exit is recorded (and
    /// Wait answers) just before its TaskExit is published, as in
    /// containerd's runc shim.
    async fn events_with(&self, topic: &str) -> Vec<String> {
        for _ in 0..500 {
            let events = self.events();
            if events.iter().any(|t| t == topic) {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.events()
    }

    fn boots(&self) -> u32 {
        *self.boots.lock().unwrap()
    }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(ShimError::NotFound(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_kill_wait_delete_publishes_the_task_events_and_stops_the_vm() {
    let f = fixture();
    let created = f.create("sb").await.unwrap();
    assert_eq!(
        created.pid,
        std::process::id(),
        "the VMM's pid, never the guest's"
    );
    assert_eq!(f.status("sb", "").await.unwrap(), Status::CREATED);
    assert_eq!(f.boots(), 1);
    f.start("sb", "").await.unwrap();
    assert_eq!(f.status("sb", "").await.unwrap(), Status::RUNNING);
    f.kill("sb", "", 9).await.unwrap();
    assert_eq!(f.wait("sb", "").await, 137);
    assert_eq!(f.status("sb", "").await.unwrap(), Status::STOPPED);
    // A signal to a finished process: NotFound, as containerd's runc shim.
    assert!(is_not_found(f.kill("sb", "", 9).await));
    let deleted = f.delete("sb", "").await.unwrap();
    assert_eq!(deleted.exit_status, 137);
    assert!(is_not_found(f.status("sb", "").await));
    // The last container gone: the VM is stopped. Killed: every process
    // has exited and nothing in the guest needs flushing.
    assert_eq!(f.vm.stops(), (0, 1));
    assert_eq!(
        f.events(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC
        ]
    );
    assert_eq!(*f.share.0.lock().unwrap(), ["bind sb", "remove sb"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_shares_one_vm_and_the_last_delete_stops_it() {
    let f = fixture();
    f.create("sb").await.unwrap();
    f.start("sb", "").await.unwrap();
    f.create("app").await.unwrap();
    f.start("app", "").await.unwrap();
    assert_eq!(f.boots(), 1, "one VM per sandbox");
    f.agent.exit("app", "", 3);
    assert_eq!(f.wait("app", "").await, 3);
    assert_eq!(f.delete("app", "").await.unwrap().exit_status, 3);
    assert!(f.vm.running(), "the sandbox container still runs");
    f.kill("sb", "", 15).await.unwrap();
    assert_eq!(f.wait("sb", "").await, 143);
    f.delete("sb", "").await.unwrap();
    assert!(!f.vm.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_never_started_task_and_double_delete() {
    let f = fixture();
    f.create("sb").await.unwrap();
    // CRI removes a container that failed to start: it was never started.
    let deleted = f.delete("sb", "").await.unwrap();
    assert_eq!(deleted.exit_status, 137);
    assert_eq!(f.vm.stops(), (0, 1));
    assert!(is_not_found(f.delete("sb", "").await));
    assert!(is_not_found(f.start("sb", "").await.map(drop)));
    // A running task is not deleted before it is killed.
    let f = fixture();
    f.create("sb").await.unwrap();
    f.start("sb", "").await.unwrap();
    assert!(matches!(
        f.delete("sb", "").await,
        Err(ShimError::FailedPrecondition(_))
    ));
    assert!(f.vm.running());
    f.kill("sb", "", 9).await.unwrap();
    f.wait("sb", "").await;
    f.delete("sb", "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_add_start_kill_wait_delete() {
    let f = fixture();
    f.create("sb").await.unwrap();
    f.start("sb", "").await.unwrap();
    f.exec("sb", "e1").await.unwrap();
    assert!(matches!(
        f.exec("sb", "e1").await,
        Err(ShimError::AlreadyExists(_))
    ));
    // Not started yet: a kill does not reach it.
    assert!(is_not_found(f.kill("sb", "e1", 9).await));
    let started = f.start("sb", "e1").await.unwrap();
    assert_eq!(started.pid, std::process::id());
    assert!(matches!(
        f.start("sb", "e1").await,
        Err(ShimError::FailedPrecondition(_))
    ));
    f.kill("sb", "e1", 9).await.unwrap();
    assert_eq!(f.wait("sb", "e1").await, 137);
    assert_eq!(f.delete("sb", "e1").await.unwrap().exit_status, 137);
    assert!(is_not_found(f.status("sb", "e1").await));
    assert_eq!(f.status("sb", "").await.unwrap(), Status::RUNNING);
    let events = f.events();
    assert!(events.contains(&topics::TASK_EXEC_ADDED_EVENT_TOPIC.to_string()));
    assert!(events.contains(&topics::TASK_EXEC_STARTED_EVENT_TOPIC.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_dying_mid_exec_ends_every_process_with_128_plus_its_signal() {
    let f = fixture();
    f.create("sb").await.unwrap();
    f.start("sb", "").await.unwrap();
    f.exec("sb", "e1").await.unwrap();
    f.start("sb", "e1").await.unwrap();
    // The VMM is killed on the host: its agent connection goes with it.
    f.vm.die(libc::SIGKILL);
    f.agent.disconnect();
    assert_eq!(f.wait("sb", "e1").await, 137);
    assert_eq!(f.wait("sb", "").await, 137);
    // The VM is gone: a new exec or start is refused, delete still works.
    assert!(f.exec("sb", "e2").await.is_err() || f.start("sb", "e2").await.is_err());
    f.delete("sb", "e1").await.unwrap();
    assert_eq!(f.delete("sb", "").await.unwrap().exit_status, 137);
    let exits = f
        .events()
        .iter()
        .filter(|t| *t == topics::TASK_EXIT_EVENT_TOPIC)
        .count();
    assert_eq!(exits, 2, "{:?}", f.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_in_the_guest_is_published_before_its_exit() {
    let f = fixture();
    f.create("sb").await.unwrap();
    f.start("sb", "").await.unwrap();
    f.agent.oom_kill("sb", "");
    assert_eq!(f.wait("sb", "").await, 137);
    let events = f.events_with(topics::TASK_EXIT_EVENT_TOPIC).await;
    let oom = events
        .iter()
        .position(|t| t == topics::TASK_OOM_EVENT_TOPIC)
        .expect("TaskOOM published");
    let exit = events
        .iter()
        .position(|t| t == topics::TASK_EXIT_EVENT_TOPIC)
        .expect("TaskExit published");
    assert!(oom < exit, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_a_vm_boots() {
    let f = fixture();
    assert!(matches!(
        f.create("").await,
        Err(ShimError::InvalidArgument(_))
    ));
    assert!(matches!(
        f.create("../escape").await,
        Err(ShimError::InvalidArgument(_))
    ));
    let missing = f
        .inner
        .create(CreateTaskRequest {
            id: "nobundle".into(),
            bundle: f.dir.path().join("absent").to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(missing, Err(ShimError::InvalidArgument(_))),
        "{missing:?}"
    );
    assert_eq!(f.boots(), 0);
    f.create("sb").await.unwrap();
    assert!(matches!(
        f.create("sb").await,
        Err(ShimError::AlreadyExists(_))
    ));
}
