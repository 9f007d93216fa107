# Counts forever without leaving the guest: `inc qword ptr [rdi]` in a loop.
#
# The host sets rdi to a per-vCPU counter in guest memory and watches it from outside;
# only a kick can take this vCPU out of KVM_RUN.

.intel_syntax noprefix
.code64
.text
.global _start
_start:
1:
    inc qword ptr [rdi]
    jmp 1b
