# The guest of `veil demo`: 64-bit code whose RAM is private from launch.
#
# Every vCPU starts here in long mode, with registers the host sets:
#   rdi = the vCPU's index
#   rsi = the hypercall transport: 0 = veil's port-I/O hypercall (`out 0x5e`),
#         1 = `vmcall`, 2 = `vmmcall` (KVM_HC_MAP_GPA_RANGE through KVM_EXIT_HYPERCALL)
#   r8  = the message page (vCPU 0 only)
#   r9  = this vCPU's burst pages
#   r10 = burst rounds
#   r11 = pages per burst request
#
# vCPU 0 first converts the message page to shared, writes the message into it and tells
# the host (port 0x11), which reads and prints it; then converts it back to private and
# tells the host again (port 0x12), whose read must now be refused. Then every vCPU runs
# its burst: `r10` round trips of its own pages, shared and back to private. Each vCPU
# ends by writing the number of requests that did not return 0 to port 0x13, and halts.
#
# Conversion requests go through `map_gpa_range` (`hypercall.S`). Register r15 counts
# the requests that failed.

.intel_syntax noprefix
.code64

.include "hypercall.S"

.equ PORT_SHARED, 0x11
.equ PORT_PRIVATE, 0x12
.equ PORT_DONE, 0x13

# Converts `pages` pages at `gpa` (registers or constants) as `attrs` says; counts a
# failure in r15 unless the result is 0.
.macro CONVERT gpa, pages, attrs
    mov rbx, \gpa
    mov rcx, \pages
    mov rdx, \attrs
    call map_gpa_range
    test rax, rax
    jz 80f
    inc r15
80:
.endm

.text
.global _start
_start:
    xor r15d, r15d
    # A stack of a page just below this vCPU's burst pages (which the host reserves).
    lea rsp, [r9 - 8]
    test rdi, rdi
    jnz burst

    # vCPU 0: the message, through a page the guest shares.
    CONVERT r8, 1, 0
    lea rax, [rip + message]
    lea rcx, [rip + message_end]
    sub rcx, rax
    mov rbx, r8
1:
    mov dl, [rax]
    mov [rbx], dl
    inc rax
    inc rbx
    dec rcx
    jnz 1b
    out PORT_SHARED, al
    CONVERT r8, 1, TO_PRIVATE
    out PORT_PRIVATE, al

burst:
    mov rcx, r10
    test rcx, rcx
    jz done
2:
    push rcx
    CONVERT r9, r11, 0
    # Touch the page while it is shared, as a device buffer would be.
    mov qword ptr [r9], rdi
    CONVERT r9, r11, TO_PRIVATE
    pop rcx
    dec rcx
    jnz 2b

done:
    mov eax, r15d
    out PORT_DONE, eax
    hlt
    jmp done

MAP_GPA_RANGE_ROUTINE

message:
    .ascii "hello from a guest whose memory the host cannot read"
message_end:
