//! nacre-vmm: the virtual machine monitor of nacre.
//!
//! One process runs one VM. The library boots a Linux guest on KVM, serves
//! its devices in user space (8250 serial, i8042 reset, virtio-mmio vsock)
//! and answers a control socket. It never needs root once started beyond
//! access to `/dev/kvm`, and it never touches container state: that is the
//! runtime's job.

pub mod devices;
