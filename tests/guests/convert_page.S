# A round trip shared -> private -> shared of the page at rsi through veil's port-I/O
# hypercall, writing the page in each state, for in-place memory with and without a
# KVM-side mapping (tests/tests/memory_kvm_side_mapping.rs). Nothing here makes KVM
# emulate an instruction: every access is to ordinary memory, and each report is
# port I/O.
#
# Reports (port 0x10), in order:
#   the to-private result (0)
#   the low halves of the page's first qword (A, written while shared) and of its
#   second (B, written while private), read while private
#   the to-shared result (0)
#   0xd0e0; then it spins until the host stops it
# The host then finds A and B in the page (the region keeps contents).

.intel_syntax noprefix
.code64
.text
.global _start
_start:
    mov rax, 0xa11ce000a11ce000
    mov [rsi], rax
    mov rax, 12
    mov rbx, rsi
    mov rcx, 1
    mov rdx, 0x10
    out 0x5e, al
    out 0x10, eax

    mov rax, 0xb0b00000b0b00000
    mov [rsi + 8], rax
    mov rax, [rsi]
    out 0x10, eax
    mov rax, [rsi + 8]
    out 0x10, eax

    mov rax, 12
    mov rbx, rsi
    mov rcx, 1
    xor edx, edx
    out 0x5e, al
    out 0x10, eax

    mov eax, 0xd0e0
    out 0x10, eax
spin:
    jmp spin
