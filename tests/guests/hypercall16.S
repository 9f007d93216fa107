# One conversion request through the port-I/O hypercall from real mode, where the
# arguments are 32-bit. The host loads rax, rbx, rcx and rdx before the guest starts,
# with a valid request in the low halves and garbage in the upper halves; the guest does
# not touch them, so the request is valid only if the host ignores the upper halves.
#
# Reports the eax the host wrote (port 0x10, 32-bit) and halts.

.intel_syntax noprefix
.code16
.text
.global _start
_start:
    out 0x5e, al
    out 0x10, eax
    hlt
