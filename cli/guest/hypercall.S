# The conversion request of veil's embedded guests (`demo.S`, `soak.S`), included by
# both: KVM_HC_MAP_GPA_RANGE over whichever transport the host found (docs/guest-abi.md).
#
# A request: rax = 12 (KVM_HC_MAP_GPA_RANGE), rbx = guest-physical address, rcx = pages,
# rdx = attributes: bit 4 (0x10) = to private, bits 3:0 = page-size hint (0 = 4 KiB,
# 1 = 2 MiB). The result comes back in rax: 0 done, 22 (EINVAL) refused, 11 (EAGAIN)
# try again.
#
# The transport is in rsi, as the host passes it at entry: 0 = veil's port-I/O
# hypercall (`out 0x5e`), 1 = `vmcall`, 2 = `vmmcall` (through KVM_EXIT_HYPERCALL).

.equ MAP_GPA_RANGE, 12
.equ TO_PRIVATE, 0x10
.equ PAGE_SIZE_2M, 1
.equ EAGAIN, 11
.equ HYPERCALL_PORT, 0x5e

# map_gpa_range: converts rcx pages at rbx as rdx says, asking again while the host
# answers EAGAIN; returns the result in rax. Every other register is kept; uses three
# quadwords of stack besides the return address.
.macro MAP_GPA_RANGE_ROUTINE
map_gpa_range:
    push rbx
    push rcx
    push rdx
90:
    mov rax, MAP_GPA_RANGE
    mov rbx, [rsp + 16]
    mov rcx, [rsp + 8]
    mov rdx, [rsp]
    cmp rsi, 1
    je 91f
    cmp rsi, 2
    je 92f
    out HYPERCALL_PORT, al
    jmp 93f
91:
    vmcall
    jmp 93f
92:
    vmmcall
93:
    cmp rax, EAGAIN
    je 90b
    pop rdx
    pop rcx
    pop rbx
    ret
.endm
