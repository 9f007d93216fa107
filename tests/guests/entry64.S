# 64-bit long mode, entered through veil_vcpu::x86_64::setup_entry on the GDT the entry
# tests write (not veil-vcpu's BOOT_GDT). The same reports as entry32.S, from long mode.
#
# Reports (32-bit `out` to port 0x10), in order:
#   CR0, CR4, EFER (low half)         the control registers the guest sees
#   CS, DS, SS, TR selectors          the segments it runs on
#   EBX                               the value the host preset
#   the address of `here`            from call/pop: the stack works, code runs where linked
#   the upper half of RAX after `mov rax, 0x123456789abcdef0`: 0x12345678 only in 64-bit mode

.intel_syntax noprefix
.code64
.text
.global _start
_start:
    mov rax, cr0
    out 0x10, eax
    mov rax, cr4
    out 0x10, eax
    mov ecx, 0xc0000080         # IA32_EFER
    rdmsr
    out 0x10, eax

    xor eax, eax
    mov ax, cs
    out 0x10, eax
    mov ax, ds
    out 0x10, eax
    mov ax, ss
    out 0x10, eax
    str ax
    out 0x10, eax

    mov eax, ebx
    out 0x10, eax

    call here
here:
    pop rax
    out 0x10, eax

    mov rax, 0x123456789abcdef0
    shr rax, 32
    out 0x10, eax
    hlt
