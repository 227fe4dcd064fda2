//! The container spec builder: [`container_spec`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{LinuxDevice, LinuxNamespace, LinuxNamespaceType, Spec};

use super::input::{ContainerSpecInput, SandboxInfo};
use super::{base, devices, mounts, resources, security, user};
use crate::cri::{self, NamespaceMode};
use crate::error::{Error, Result};
use crate::keys::annotation as ann;

/// The PATH a process gets when neither the image nor the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the OCI runtime spec of a pod container. The root filesystem is `rootfs` relative to
/// the bundle (containerd's layout).
pub fn container_spec(input: &ContainerSpecInput) -> Result<Spec> {
    let cfg = input.config;
    let name = cfg
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::invalid("container config metadata.name is empty"))?;
    let sc = cfg.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let res = cfg.linux.as_ref().and_then(|l| l.resources.as_ref());
    let image = input.image.config().as_ref();
    let host = input.host;

    let privileged = security::privileged(sc, input.sandbox_config)?;
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);

    // Process.
    let args = process_args(cfg, image)?;
    let hostname = if input.sandbox.hostname.is_empty() {
        input.sandbox_config.hostname.as_str()
    } else {
        input.sandbox.hostname.as_str()
    };
    let env = process_env(cfg, image, hostname)?;
    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else {
        image
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    };
    if !Path::new(&cwd).is_absolute() {
        return Err(Error::invalid(format!(
            "working_dir: {cwd:?} is not an absolute path"
        )));
    }
    let resolved = user::resolve_user(input.users, sc, image.and_then(|c| c.user().as_deref()))?;
    let caps = security::capabilities(sc, privileged, &host.security)?;
    let bounding = caps.bounding().clone().unwrap_or_default();
    let seccomp = security::seccomp(sc, privileged, &bounding, &host.security)?;
    let apparmor = security::apparmor(sc, privileged, &host.security)?;
    let selinux = security::selinux(sc, input.sandbox_config, &host.security)?;

    let mut process = base::process();
    process
        .set_terminal(Some(cfg.tty))
        .set_user(base::user(
            resolved.uid,
            resolved.gid,
            resolved.additional_gids.clone(),
        ))
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(caps))
        .set_no_new_privileges(Some(sc.is_some_and(|s| s.no_new_privs)))
        .set_apparmor_profile(apparmor)
        .set_oom_score_adj(Some(resources::oom_score_adj(res, host.own_oom_score_adj)))
        .set_selinux_label(selinux.as_ref().map(|(p, _)| p.clone()));

    // Mounts, devices, resources.
    if !host.security.recursive_read_only_mounts {
        if let Some(i) = cfg.mounts.iter().position(|m| m.recursive_read_only) {
            return Err(Error::invalid(format!(
                "mounts[{i}].recursive_read_only: this node cannot make recursive read-only \
                 mounts (needs Linux >= 5.12 and a runc that supports the rro mount option)"
            )));
        }
    }
    let mounts = mounts::container_mounts(cfg, input.sandbox, privileged, readonly_rootfs)?;
    let requested = devices::request_devices(&cfg.devices)?;
    let (device_list, rules) = if privileged {
        let mut list = devices::host_devices(&host.dev_dir)?;
        merge_devices(&mut list, requested.iter().map(|d| d.device.clone()));
        (list, resources::allow_all_devices()?)
    } else {
        let mut rules = resources::default_device_rules()?;
        rules.extend(requested.iter().map(|d| d.rule.clone()));
        let mut list = Vec::new();
        merge_devices(&mut list, requested.iter().map(|d| d.device.clone()));
        (list, rules)
    };
    let linux_resources = resources::enforceable_resources(
        res,
        host.cgroup,
        &host.limits,
        rules,
        &format!("container {}", input.id),
    )?;

    // Linux.
    let mut linux = base::linux();
    linux
        .set_resources(Some(linux_resources))
        .set_cgroups_path(
            host.cgroup_driver
                .container_cgroups_path(&input.sandbox.cgroup_parent, input.id)
                .map(PathBuf::from),
        )
        .set_namespaces(Some(namespaces(input, sc, privileged)?))
        .set_devices(if device_list.is_empty() {
            None
        } else {
            Some(device_list)
        })
        .set_seccomp(seccomp)
        .set_rootfs_propagation(mounts.rootfs_propagation.clone())
        .set_masked_paths(Some(security::masked_paths(sc, privileged)))
        .set_readonly_paths(Some(security::readonly_paths(sc, privileged)))
        .set_mount_label(selinux.map(|(_, m)| m));

    // The container shares the sandbox's UTS namespace: setting a hostname would fail.
    let spec = base::spec(
        readonly_rootfs,
        mounts.mounts,
        process,
        None,
        spec_annotations(input, name),
        linux,
    );
    Ok(spec)
}

/// The process arguments, as containerd (and docker) combine them: a CRI `command` replaces
/// the image's entrypoint and drops its cmd; CRI `args` alone replace the cmd.
pub fn process_args(
    cfg: &cri::ContainerConfig,
    image: Option<&ImageConfig>,
) -> Result<Vec<String>> {
    let mut command = cfg.command.clone();
    let mut args = cfg.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.and_then(|c| c.cmd().clone()).unwrap_or_default();
        }
        let entrypoint = image
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default();
        // `ENTRYPOINT [""]` means "no entrypoint".
        if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
            command = entrypoint;
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(Error::invalid(
            "no command specified: the request has no command or args and the image no \
             entrypoint or cmd",
        ));
    }
    Ok(command)
}

/// The environment: a default PATH, HOSTNAME, TERM for a tty, the image's env, then the
/// request's envs; a later value of a key replaces the earlier one in place.
pub fn process_env(
    cfg: &cri::ContainerConfig,
    image: Option<&ImageConfig>,
    hostname: &str,
) -> Result<Vec<String>> {
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    if !hostname.is_empty() {
        set("HOSTNAME", hostname);
    }
    if cfg.tty {
        set("TERM", "xterm");
    }
    for kv in image.and_then(|c| c.env().as_ref()).into_iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    for kv in &cfg.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Error::invalid(format!(
                "envs: invalid variable name {:?}",
                kv.key
            )));
        }
        set(&kv.key, &kv.value);
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn ns(typ: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    LinuxNamespace::default()
        .set_typ(typ)
        .set_path(path.map(PathBuf::from))
        .clone()
}

/// Namespaces: join the sandbox's network, IPC and UTS namespaces (none when the pod uses the
/// host's; UTS follows network), PID per the mode, a new mount namespace, and a new cgroup
/// namespace on cgroup v2 for unprivileged containers.
fn namespaces(
    input: &ContainerSpecInput,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Vec<LinuxNamespace>> {
    let sb: &SandboxInfo = input.sandbox;
    let opts = sc.and_then(|s| s.namespace_options.as_ref());
    if let Some(u) = opts.and_then(|o| o.userns_options.as_ref()) {
        if u.mode() != NamespaceMode::Node {
            return Err(Error::invalid(
                "security_context.namespace_options.userns_options: user namespaces are not \
                 supported by peapod (mode must be NODE)",
            ));
        }
    }
    let mode = |f: fn(&cri::NamespaceOption) -> NamespaceMode| opts.map_or(NamespaceMode::Pod, f);
    let host_net = sb.host_network || mode(|o| o.network()) == NamespaceMode::Node;
    let host_ipc = sb.host_ipc || mode(|o| o.ipc()) == NamespaceMode::Node;
    let pid_mode = mode(|o| o.pid());

    let sandbox_ns = |kind: &str| -> Result<Option<String>> {
        if sb.pid == 0 {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {} has no running pause process to join its {kind} namespace",
                sb.id
            )));
        }
        Ok(Some(format!("/proc/{}/ns/{kind}", sb.pid)))
    };

    let mut out = vec![ns(LinuxNamespaceType::Mount, None)];
    if !host_net {
        out.push(ns(LinuxNamespaceType::Network, sandbox_ns("net")?));
        out.push(ns(LinuxNamespaceType::Uts, sandbox_ns("uts")?));
    }
    if !host_ipc {
        out.push(ns(LinuxNamespaceType::Ipc, sandbox_ns("ipc")?));
    }
    match pid_mode {
        NamespaceMode::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Pod if !sb.host_pid => {
            out.push(ns(LinuxNamespaceType::Pid, sandbox_ns("pid")?))
        }
        NamespaceMode::Pod | NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let pid = input.target_pid.filter(|p| *p != 0).ok_or_else(|| {
                Error::invalid(format!(
                    "security_context.namespace_options: PID mode TARGET needs the running \
                     target container {:?}",
                    opts.map(|o| o.target_id.as_str()).unwrap_or("")
                ))
            })?;
            out.push(ns(
                LinuxNamespaceType::Pid,
                Some(format!("/proc/{pid}/ns/pid")),
            ));
        }
    }
    if input.host.cgroup.v2 && !privileged {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// Adds devices, a later one replacing an earlier one at the same container path.
fn merge_devices(list: &mut Vec<LinuxDevice>, more: impl Iterator<Item = LinuxDevice>) {
    for d in more {
        list.retain(|x| x.path() != d.path());
        list.push(d);
    }
}

fn spec_annotations(input: &ContainerSpecInput, name: &str) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = input.config.annotations.clone();
    let md = input.sandbox_config.metadata.clone().unwrap_or_default();
    let image = input
        .config
        .image
        .as_ref()
        .map(|i| {
            if i.user_specified_image.is_empty() {
                i.image.clone()
            } else {
                i.user_specified_image.clone()
            }
        })
        .unwrap_or_default();
    for (k, v) in [
        (
            ann::CONTAINER_TYPE,
            ann::CONTAINER_TYPE_CONTAINER.to_string(),
        ),
        (ann::SANDBOX_ID, input.sandbox.id.clone()),
        (ann::SANDBOX_NAME, md.name),
        (ann::SANDBOX_NAMESPACE, md.namespace),
        (ann::SANDBOX_UID, md.uid),
        (ann::CONTAINER_NAME, name.to_string()),
        (ann::IMAGE_NAME, image),
    ] {
        a.insert(k.to_string(), v);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Driver as CgroupDriver;
    use crate::spec::{CgroupHost, HostInfo, HostSecurity, SandboxInfo, UserDb};
    use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
    use oci_spec::runtime::{Capability, Linux, LinuxSeccompAction, Process};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    struct Fixture {
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
        image: ImageConfiguration,
        users: UserDb,
        sandbox: SandboxInfo,
        target_pid: Option<u32>,
        host: HostInfo,
    }

    impl Fixture {
        fn new() -> Self {
            let image = ImageConfigurationBuilder::default()
                .config(
                    ConfigBuilder::default()
                        .entrypoint(vec!["/entry".to_string()])
                        .cmd(vec!["serve".to_string(), "--port=80".to_string()])
                        .env(vec![
                            "PATH=/img/bin".to_string(),
                            "A=image".to_string(),
                            "B=image".to_string(),
                        ])
                        .working_dir("/srv".to_string())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            Fixture {
                config: cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "web".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: "sha256:abc".into(),
                        user_specified_image: "nginx:1.27".into(),
                        ..Default::default()
                    }),
                    linux: Some(cri::LinuxContainerConfig {
                        resources: None,
                        security_context: Some(cri::LinuxContainerSecurityContext::default()),
                    }),
                    ..Default::default()
                },
                sandbox_config: cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: "pod".into(),
                        uid: "uid-1".into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    hostname: "pod-host".into(),
                    linux: Some(cri::LinuxPodSandboxConfig {
                        cgroup_parent: "/kubepods/burstable/pod1".into(),
                        security_context: Some(cri::LinuxSandboxSecurityContext::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                image,
                users: UserDb::parse(
                    "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
                    "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
                ),
                sandbox: SandboxInfo {
                    id: "sandbox-1".into(),
                    pid: 4242,
                    hostname_path: Some("/run/peapod/sb/hostname".into()),
                    hosts_path: Some("/run/peapod/sb/hosts".into()),
                    resolv_conf_path: Some("/run/peapod/sb/resolv.conf".into()),
                    shm_path: Some("/run/peapod/sb/shm".into()),
                    cgroup_parent: "/kubepods/burstable/pod1".into(),
                    ..Default::default()
                },
                target_pid: None,
                host: HostInfo {
                    cgroup_driver: CgroupDriver::Cgroupfs,
                    cgroup: CgroupHost {
                        v2: false,
                        swap: true,
                    },
                    limits: crate::cgroup::Enforceable::all(),
                    security: HostSecurity::default(),
                    own_oom_score_adj: -999,
                    dev_dir: PathBuf::from("/dev"),
                },
            }
        }

        fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
            self.config
                .linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
        }

        fn build(&self) -> Result<Spec> {
            container_spec(&ContainerSpecInput {
                id: ID,
                config: &self.config,
                sandbox_config: &self.sandbox_config,
                image: &self.image,
                users: &self.users,
                sandbox: &self.sandbox,
                target_pid: self.target_pid,
                host: &self.host,
            })
        }

        fn spec(&self) -> Spec {
            self.build().unwrap()
        }

        fn err(&self) -> String {
            match self.build() {
                Err(Error::InvalidArgument(m)) => m,
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }
    }

    fn process(s: &Spec) -> &Process {
        s.process().as_ref().unwrap()
    }
    fn linux(s: &Spec) -> &Linux {
        s.linux().as_ref().unwrap()
    }
    fn env(s: &Spec) -> Vec<String> {
        process(s).env().clone().unwrap()
    }
    fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        linux(s)
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
            .collect()
    }
    fn bounding(s: &Spec) -> oci_spec::runtime::Capabilities {
        process(s)
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
    }

    // --- command and args ---

    #[test]
    fn image_entrypoint_and_cmd() {
        let f = Fixture::new();
        assert_eq!(
            process(&f.spec()).args().clone().unwrap(),
            ["/entry", "serve", "--port=80"]
        );
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_cmd() {
        let mut f = Fixture::new();
        f.config.command = vec!["/bin/sh".into()];
        assert_eq!(process(&f.spec()).args().clone().unwrap(), ["/bin/sh"]);
        f.config.args = vec!["-c".into(), "true".into()];
        assert_eq!(
            process(&f.spec()).args().clone().unwrap(),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn args_alone_replace_cmd() {
        let mut f = Fixture::new();
        f.config.args = vec!["other".into()];
        assert_eq!(
            process(&f.spec()).args().clone().unwrap(),
            ["/entry", "other"]
        );
    }

    #[test]
    fn empty_entrypoint_string_means_none() {
        let mut f = Fixture::new();
        f.image = ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .entrypoint(vec![String::new()])
                    .cmd(vec!["/bin/true".to_string()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(process(&f.spec()).args().clone().unwrap(), ["/bin/true"]);
    }

    #[test]
    fn no_command_at_all_is_invalid() {
        let mut f = Fixture::new();
        f.image = ImageConfiguration::default();
        assert!(f.err().contains("no command"));
    }

    #[test]
    fn empty_name_is_invalid() {
        let mut f = Fixture::new();
        f.config.metadata = None;
        assert!(f.err().contains("metadata.name"));
    }

    // --- env, cwd, terminal ---

    #[test]
    fn env_merge_image_then_request() {
        let mut f = Fixture::new();
        f.config.envs = vec![
            cri::KeyValue {
                key: "B".into(),
                value: "req".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
        ];
        assert_eq!(
            env(&f.spec()),
            [
                "PATH=/img/bin",
                "HOSTNAME=pod-host",
                "A=image",
                "B=req",
                "C=x=y"
            ]
        );
    }

    #[test]
    fn default_path_when_none() {
        let mut f = Fixture::new();
        f.image = ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .cmd(vec!["x".to_string()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = env(&f.spec());
        assert_eq!(e[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn hostname_env_prefers_sandbox_info() {
        let mut f = Fixture::new();
        f.sandbox.hostname = "node-1".into();
        assert!(env(&f.spec()).contains(&"HOSTNAME=node-1".to_string()));
        f.sandbox.hostname.clear();
        f.sandbox_config.hostname.clear();
        assert!(!env(&f.spec()).iter().any(|e| e.starts_with("HOSTNAME=")));
    }

    #[test]
    fn invalid_env_name() {
        let mut f = Fixture::new();
        f.config.envs = vec![cri::KeyValue {
            key: "A=B".into(),
            value: "x".into(),
        }];
        assert!(f.err().contains("envs"));
    }

    #[test]
    fn working_dir_request_image_default() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.spec()).cwd(), Path::new("/srv"));
        f.config.working_dir = "/work".into();
        assert_eq!(process(&f.spec()).cwd(), Path::new("/work"));
        f.config.working_dir.clear();
        f.image = ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .cmd(vec!["x".to_string()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(process(&f.spec()).cwd(), Path::new("/"));
        f.config.working_dir = "relative".into();
        assert!(f.err().contains("working_dir"));
    }

    #[test]
    fn terminal_and_term() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.spec()).terminal(), Some(false));
        f.config.tty = true;
        let s = f.spec();
        assert_eq!(process(&s).terminal(), Some(true));
        assert!(env(&s).contains(&"TERM=xterm".to_string()));
    }

    #[test]
    fn no_rlimits_and_no_hostname() {
        let s = Fixture::new().spec();
        assert!(process(&s).rlimits().is_none());
        assert!(s.hostname().is_none());
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }

    // --- user ---

    #[test]
    fn user_defaults_to_root() {
        let s = Fixture::new().spec();
        let u = process(&s).user();
        assert_eq!((u.uid(), u.gid()), (0, 0));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![0]);
    }

    #[test]
    fn image_user_is_used() {
        let mut f = Fixture::new();
        set_image_user(&mut f, "app");
        let s = f.spec();
        let u = process(&s).user();
        assert_eq!((u.uid(), u.gid()), (1000, 1000));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![1000, 2000]);
    }

    #[test]
    fn run_as_user_group_and_supplemental_groups() {
        let mut f = Fixture::new();
        set_image_user(&mut f, "app");
        f.sc().run_as_user = Some(cri::Int64Value { value: 1000 });
        f.sc().run_as_group = Some(cri::Int64Value { value: 3000 });
        f.sc().supplemental_groups = vec![4000];
        let s = f.spec();
        let u = process(&s).user();
        assert_eq!((u.uid(), u.gid()), (1000, 3000));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![3000, 2000, 4000]);
        f.sc().supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        let s = f.spec();
        assert_eq!(
            process(&s).user().additional_gids().clone().unwrap(),
            vec![3000, 4000]
        );
    }

    #[test]
    fn run_as_group_without_user_is_invalid() {
        let mut f = Fixture::new();
        f.sc().run_as_group = Some(cri::Int64Value { value: 3000 });
        assert!(f.err().contains("run_as_group"));
    }

    #[test]
    fn run_as_username_missing_is_invalid() {
        let mut f = Fixture::new();
        f.sc().run_as_username = "ghost".into();
        assert!(f.err().contains("ghost"));
        f.sc().run_as_username = "app".into();
        assert_eq!(process(&f.spec()).user().uid(), 1000);
    }

    fn set_image_user(f: &mut Fixture, user: &str) {
        let mut c = f.image.config().clone().unwrap();
        c.set_user(Some(user.to_string()));
        f.image.set_config(Some(c));
    }

    // --- mounts ---

    #[test]
    fn sandbox_files_and_defaults_are_mounted() {
        let s = Fixture::new().spec();
        let dests: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
        ] {
            assert!(dests.contains(&PathBuf::from(d)), "{d}");
        }
    }

    #[test]
    fn request_mount_propagation_sets_rootfs_propagation() {
        let mut f = Fixture::new();
        f.config.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/tmp".into(),
            propagation: cri::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        }];
        let s = f.spec();
        assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rshared"));
        let m = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert_eq!(m.options().clone().unwrap(), ["rbind", "rshared", "rw"]);
    }

    #[test]
    fn missing_host_path_is_invalid() {
        let mut f = Fixture::new();
        f.config.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/no/such/dir".into(),
            ..Default::default()
        }];
        assert!(f.err().contains("mounts[0].host_path"));
    }

    #[test]
    fn readonly_rootfs() {
        let mut f = Fixture::new();
        assert_eq!(f.spec().root().as_ref().unwrap().readonly(), Some(false));
        f.sc().readonly_rootfs = true;
        let s = f.spec();
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let hosts = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/etc/hosts"))
            .unwrap();
        assert!(hosts
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
    }

    // --- devices ---

    #[test]
    fn request_devices_added_with_cgroup_rule() {
        let mut f = Fixture::new();
        f.config.devices = vec![cri::Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let s = f.spec();
        let d = linux(&s).devices().clone().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path(), Path::new("/dev/xnull"));
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(!rules[0].allow(), "deny-all first");
        let last = rules.last().unwrap();
        assert!(last.allow() && last.major() == Some(1) && last.minor() == Some(3));
        assert_eq!(last.access().as_deref(), Some("rw"));
    }

    // --- namespaces ---

    #[test]
    fn joins_sandbox_namespaces() {
        let s = Fixture::new().spec();
        let ns = namespaces(&s);
        assert!(ns.contains(&(LinuxNamespaceType::Mount, None)));
        assert!(ns.contains(&(
            LinuxNamespaceType::Network,
            Some("/proc/4242/ns/net".into())
        )));
        assert!(ns.contains(&(LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc".into()))));
        assert!(ns.contains(&(LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts".into()))));
        // Default PID mode (POD, the proto default) joins the sandbox's.
        assert!(ns.contains(&(LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid".into()))));
        assert!(
            !ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Cgroup),
            "cgroup v1: none"
        );
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::User));
    }

    fn ns_opts(f: &mut Fixture, pid: NamespaceMode) {
        f.sc().namespace_options = Some(cri::NamespaceOption {
            pid: pid as i32,
            target_id: "target".into(),
            ..Default::default()
        });
    }

    #[test]
    fn pid_modes() {
        let mut f = Fixture::new();
        ns_opts(&mut f, NamespaceMode::Container);
        assert!(namespaces(&f.spec()).contains(&(LinuxNamespaceType::Pid, None)));
        ns_opts(&mut f, NamespaceMode::Node);
        assert!(!namespaces(&f.spec())
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Pid));
        ns_opts(&mut f, NamespaceMode::Target);
        assert!(f.err().contains("TARGET"));
        f.target_pid = Some(777);
        assert!(namespaces(&f.spec())
            .contains(&(LinuxNamespaceType::Pid, Some("/proc/777/ns/pid".into()))));
    }

    #[test]
    fn host_namespaces() {
        let mut f = Fixture::new();
        f.sandbox.host_network = true;
        f.sandbox.host_ipc = true;
        f.sandbox.host_pid = true;
        let ns = namespaces(&f.spec());
        for t in [
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Pid,
        ] {
            assert!(!ns.iter().any(|(x, _)| *x == t), "{t:?}");
        }
        assert!(ns.contains(&(LinuxNamespaceType::Mount, None)));
    }

    #[test]
    fn no_pause_process_is_failed_precondition() {
        let mut f = Fixture::new();
        f.sandbox.pid = 0;
        assert!(matches!(f.build(), Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn user_namespace_pod_mode_is_invalid() {
        let mut f = Fixture::new();
        f.sc().namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(f.err().contains("userns_options"));
    }

    #[test]
    fn cgroup_namespace_on_v2_unless_privileged() {
        let mut f = Fixture::new();
        f.host.cgroup.v2 = true;
        assert!(namespaces(&f.spec()).contains(&(LinuxNamespaceType::Cgroup, None)));
        f.sandbox_config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .privileged = true;
        f.sc().privileged = true;
        assert!(!namespaces(&f.spec())
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Cgroup));
    }

    // --- cgroups path and annotations ---

    #[test]
    fn cgroups_path_by_driver() {
        let mut f = Fixture::new();
        assert_eq!(
            linux(&f.spec()).cgroups_path().clone().unwrap(),
            PathBuf::from(format!("/kubepods/burstable/pod1/{ID}"))
        );
        f.host.cgroup_driver = CgroupDriver::Systemd;
        f.sandbox.cgroup_parent = "kubepods-burstable-pod1.slice".into();
        assert_eq!(
            linux(&f.spec()).cgroups_path().clone().unwrap(),
            PathBuf::from(format!("kubepods-burstable-pod1.slice:cri-peapod:{ID}"))
        );
        f.sandbox.cgroup_parent.clear();
        assert!(linux(&f.spec()).cgroups_path().is_none());
    }

    #[test]
    fn annotations() {
        let mut f = Fixture::new();
        f.config.annotations.insert("user/x".into(), "1".into());
        f.config
            .annotations
            .insert(ann::SANDBOX_ID.into(), "spoofed".into());
        let s = f.spec();
        let a = s.annotations().as_ref().unwrap();
        let get = |k: &str| a.get(k).map(String::as_str);
        assert_eq!(get(ann::CONTAINER_TYPE), Some("container"));
        assert_eq!(get(ann::SANDBOX_ID), Some("sandbox-1"));
        assert_eq!(get(ann::SANDBOX_NAME), Some("pod"));
        assert_eq!(get(ann::SANDBOX_NAMESPACE), Some("default"));
        assert_eq!(get(ann::SANDBOX_UID), Some("uid-1"));
        assert_eq!(get(ann::CONTAINER_NAME), Some("web"));
        assert_eq!(get(ann::IMAGE_NAME), Some("nginx:1.27"));
        assert_eq!(get("user/x"), Some("1"));
    }

    // --- security ---

    #[test]
    fn default_security_settings() {
        let s = Fixture::new().spec();
        assert_eq!(bounding(&s).len(), security::DEFAULT_CAPABILITIES.len());
        assert_eq!(process(&s).no_new_privileges(), Some(false));
        assert_eq!(
            linux(&s).masked_paths().clone().unwrap().len(),
            security::DEFAULT_MASKED_PATHS.len()
        );
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap().len(),
            security::DEFAULT_READONLY_PATHS.len()
        );
        assert!(linux(&s).seccomp().is_none(), "unset seccomp is unconfined");
        assert!(process(&s).apparmor_profile().is_none());
        assert!(process(&s).selinux_label().is_none());
    }

    #[test]
    fn no_new_privs() {
        let mut f = Fixture::new();
        f.sc().no_new_privs = true;
        assert_eq!(process(&f.spec()).no_new_privileges(), Some(true));
    }

    #[test]
    fn capabilities_add_drop() {
        let mut f = Fixture::new();
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            drop_capabilities: vec!["cap_net_raw".into()],
            ..Default::default()
        });
        let b = bounding(&f.spec());
        assert!(b.contains(&Capability::SysAdmin) && !b.contains(&Capability::NetRaw));
        f.sc().capabilities.as_mut().unwrap().add_capabilities = vec!["WIZARD".into()];
        assert!(f.err().contains("add_capabilities"));
    }

    #[test]
    fn privileged_requires_privileged_sandbox() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        assert!(f.err().contains("privileged"));
    }

    #[test]
    fn privileged_container() {
        let mut f = Fixture::new();
        f.sandbox_config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .privileged = true;
        f.sc().privileged = true;
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: 0,
            localhost_ref: String::new(),
        });
        let s = f.spec();
        assert_eq!(bounding(&s).len(), security::ALL_CAPABILITIES.len());
        assert!(linux(&s).masked_paths().clone().unwrap().is_empty());
        assert!(linux(&s).readonly_paths().clone().unwrap().is_empty());
        assert!(linux(&s).seccomp().is_none());
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        let devs = linux(&s).devices().clone().unwrap();
        assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
        let sys = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    }

    #[test]
    fn request_masked_and_readonly_paths() {
        let mut f = Fixture::new();
        f.sc().masked_paths = vec!["/proc/kcore".into()];
        f.sc().readonly_paths = vec!["/proc/sys".into()];
        let s = f.spec();
        assert_eq!(linux(&s).masked_paths().clone().unwrap(), ["/proc/kcore"]);
        assert_eq!(linux(&s).readonly_paths().clone().unwrap(), ["/proc/sys"]);
    }

    #[test]
    fn seccomp_runtime_default_follows_capabilities() {
        let mut f = Fixture::new();
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let s = f.spec();
        let p = linux(&s).seccomp().clone().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        let allows_mount = |p: &oci_spec::runtime::LinuxSeccomp| {
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .any(|c| c.names().iter().any(|n| n == "mount"))
        };
        assert!(!allows_mount(&p));
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
        assert!(allows_mount(&linux(&f.spec()).seccomp().clone().unwrap()));
    }

    #[test]
    fn seccomp_localhost_missing_is_invalid() {
        let mut f = Fixture::new();
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "/var/lib/kubelet/seccomp/nope.json".into(),
        });
        assert!(f.err().contains("/var/lib/kubelet/seccomp/nope.json"));
    }

    #[test]
    fn apparmor_and_selinux_need_host_support() {
        let mut f = Fixture::new();
        f.sc().apparmor = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "k8s-prof".into(),
        });
        assert!(f.err().contains("AppArmor"));
        f.host.security.apparmor_enabled = true;
        assert_eq!(
            process(&f.spec()).apparmor_profile().as_deref(),
            Some("k8s-prof")
        );

        f.sc().selinux_options = Some(cri::SeLinuxOption {
            level: "s0:c1,c2".into(),
            ..Default::default()
        });
        assert!(f.err().contains("SELinux"));
        f.host.security.selinux_enabled = true;
        let s = f.spec();
        assert_eq!(
            process(&s).selinux_label().as_deref(),
            Some("system_u:system_r:container_t:s0:c1,c2")
        );
        assert_eq!(
            linux(&s).mount_label().as_deref(),
            Some("system_u:object_r:container_file_t:s0:c1,c2")
        );
    }

    // --- resources ---

    #[test]
    fn resources_and_oom_score_adj() {
        let mut f = Fixture::new();
        f.config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 256,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: -1000,
            ..Default::default()
        });
        let s = f.spec();
        let r = linux(&s).resources().as_ref().unwrap();
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(20_000));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(128 << 20));
        assert_eq!(
            process(&s).oom_score_adj(),
            Some(-999),
            "clamped to peapod's own"
        );
    }

    #[test]
    fn unified_on_v1_is_invalid() {
        let mut f = Fixture::new();
        let mut r = cri::LinuxContainerResources::default();
        r.unified.insert("memory.high".into(), "1".into());
        f.config.linux.as_mut().unwrap().resources = Some(r);
        assert!(f.err().contains("unified"));
    }

    // --- serialisation ---

    #[test]
    fn serialises_to_runc_config_json() {
        let mut f = Fixture::new();
        f.config.tty = true;
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: 0,
            localhost_ref: String::new(),
        });
        f.sc().run_as_user = Some(cri::Int64Value { value: 1000 });
        f.config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            cpu_shares: 2,
            memory_limit_in_bytes: 1 << 30,
            oom_score_adj: 100,
            ..Default::default()
        });
        let spec = f.spec();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["ociVersion"], "1.1.0");
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["process"]["terminal"], true);
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert!(json["process"]["user"]["additionalGids"].is_array());
        assert!(json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("CAP_CHOWN")));
        assert_eq!(json["process"]["oomScoreAdj"], 100);
        assert_eq!(json["process"]["noNewPrivileges"], false);
        assert!(json["process"].get("rlimits").is_none());
        assert_eq!(
            json["linux"]["cgroupsPath"],
            format!("/kubepods/burstable/pod1/{ID}")
        );
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 2);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 1i64 << 30);
        assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["linux"]["seccomp"]["defaultErrnoRet"], 1);
        assert!(json["linux"]["seccomp"]["architectures"][0]
            .as_str()
            .unwrap()
            .starts_with("SCMP_ARCH_"));
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&serde_json::json!({"type": "network", "path": "/proc/4242/ns/net"})));
        assert!(ns.contains(&serde_json::json!({"type": "mount"})));
        assert!(
            json["linux"]["maskedPaths"].is_array() && json["linux"]["readonlyPaths"].is_array()
        );
        let proc_mount = &json["mounts"][0];
        assert_eq!(proc_mount["destination"], "/proc");
        assert_eq!(proc_mount["type"], "proc");
        assert!(json.get("hostname").is_none());
        assert_eq!(json["annotations"][ann::SANDBOX_ID], "sandbox-1");
        // Round trip.
        let back: Spec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }

    /// Runs a generated spec with the host's runc (needs root, runc and a static
    /// /bin/busybox): `cargo test -- --ignored runc_runs_generated_spec`.
    #[test]
    #[ignore]
    fn runc_runs_generated_spec() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "etc", "proc", "dev", "sys", "tmp", "data"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .unwrap();
        let files = tmp.path().join("sandbox");
        std::fs::create_dir_all(files.join("shm")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(files.join("shm"), std::fs::Permissions::from_mode(0o1777))
                .unwrap();
        }
        std::fs::write(files.join("hostname"), "pod-host\n").unwrap();
        std::fs::write(files.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(files.join("resolv.conf"), "nameserver 10.0.0.10\n").unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();

        let mut f = Fixture::new();
        f.host = HostInfo::detect(CgroupDriver::Cgroupfs);
        f.users = UserDb::from_rootfs(&rootfs).unwrap();
        f.sandbox.pid = std::process::id();
        f.sandbox.host_pid = true;
        f.sandbox.cgroup_parent = "/peapod-spec-test".into();
        f.sandbox.hostname_path = Some(files.join("hostname"));
        f.sandbox.hosts_path = Some(files.join("hosts"));
        f.sandbox.resolv_conf_path = Some(files.join("resolv.conf"));
        f.sandbox.shm_path = Some(files.join("shm"));
        f.config.command = vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "id; grep -E '^(CapBnd|Seccomp|NoNewPrivs)' /proc/self/status; \
             cat /etc/resolv.conf; echo hi > /dev/shm/x; touch /data/y 2>/dev/null || echo ro-ok; \
             /bin/busybox unshare -U true 2>/dev/null || echo unshare-blocked"
                .into(),
        ];
        f.config.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: data.to_str().unwrap().into(),
            readonly: true,
            ..Default::default()
        }];
        f.sc().run_as_user = Some(cri::Int64Value { value: 1000 });
        f.sc().no_new_privs = true;
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: 0,
            localhost_ref: String::new(),
        });
        f.config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        });
        let (ok, stdout, stderr) = runc_run(tmp.path(), &bundle, &f.spec());
        eprintln!("{stdout}");
        assert!(ok, "runc failed: {stdout}\n{stderr}");
        assert!(stdout.contains("uid=1000"), "{stdout}");
        assert!(stdout.contains("groups=1000(app),2000(extra)"), "{stdout}");
        assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
        assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
        assert!(stdout.contains("nameserver 10.0.0.10"), "{stdout}");
        assert!(stdout.contains("ro-ok"), "{stdout}");
        assert!(stdout.contains("unshare-blocked"), "{stdout}");
        assert_eq!(
            std::fs::read_to_string(files.join("shm/x")).unwrap(),
            "hi\n"
        );

        // The same pod, privileged: all capabilities, no seccomp, writable /sys.
        f.sandbox_config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .privileged = true;
        f.sc().privileged = true;
        f.sc().run_as_user = None;
        f.config.command = vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "grep -E '^(CapBnd|Seccomp):' /proc/self/status; ls /dev/null /dev/tty; \
             grep ' /sys ' /proc/self/mounts"
                .into(),
        ];
        let (ok, stdout, stderr) = runc_run(tmp.path(), &bundle, &f.spec());
        eprintln!("{stdout}");
        assert!(ok, "runc failed (privileged): {stdout}\n{stderr}");
        assert!(stdout.contains("Seccomp:\t0"), "{stdout}");
        assert!(!stdout.contains("CapBnd:\t00000000a80425fb"), "{stdout}");
        assert!(stdout.contains(" rw,"), "{stdout}");
    }

    /// Runs `spec` with runc in `bundle`; returns (success, stdout, stderr).
    fn runc_run(tmp: &Path, bundle: &Path, spec: &Spec) -> (bool, String, String) {
        use std::process::Command;
        spec.save(bundle.join("config.json")).unwrap();
        let state = tmp.join("state");
        let id = format!("peapod-spec-test-{}", std::process::id());
        let out = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "-f", &id])
            .output();
        // runc leaves the (empty) parent cgroups behind.
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path().join("peapod-spec-test"));
            }
        }
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
